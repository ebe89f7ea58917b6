"""vLLM's pinned CUDA set (roles/vllm/files/requirements-cuda.txt) against the package index, for
each supported OS's Python, and against the driver branch the roles and the example inventory
install.

By default the checks read the index's file lists only (PyPI's simple API, a few MB): every pin
has a wheel this Python and platform can install, vLLM refuses Python 3.10, and LMCache's wheel
(17.7 MB, the one download) asks for the CUDA major of the set. ``pytest --pinned-set`` also lets
pip resolve the whole lock with its dependencies for each Python (``--dry-run --report``): this
index serves no separate metadata files, so pip downloads every wheel, about 4 GB per Python.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import sys
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion
from scenario import REPO

LOCK = REPO / "roles" / "vllm" / "files" / "requirements-cuda.txt"
INDEX_HOST = "pypi.org"
CA = "/etc/ssl/certs/ca-certificates.crt"
# glibc of each release: the newest manylinux tag its wheels may carry (Debian 12: 2.36,
# Ubuntu 24.04: 2.39, Ubuntu 22.04: 2.35).
GLIBC = {"3.11": 36, "3.12": 39, "3.10": 35}
TLS = ssl.create_default_context(cafile=CA)


def role_vars(role: str, part: str = "vars") -> dict:
    return yaml.safe_load((REPO / "roles" / role / part / "main.yml").read_text())


def pinned() -> dict[str, str]:
    pins = [ln.split("==") for ln in LOCK.read_text().splitlines() if ln and not ln.startswith("#")]
    return {canonical(n): v for n, v in pins}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def supported_pythons() -> list[str]:
    return sorted(set(role_vars("vllm")["vllm_supported_os"].values()))


def platforms(python: str) -> list[str]:
    """What pip on that release accepts for x86_64, newest first (PEP 600 and the legacy tags)."""
    many = [f"manylinux_2_{m}_x86_64" for m in range(GLIBC[python], 4, -1)]
    return [*many, "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]


def installable(python: str) -> set[Tag]:
    """The wheel tags CPython *python* on glibc x86_64 installs."""
    version = tuple(int(p) for p in python.split("."))
    plats = platforms(python)
    tags = set(cpython_tags(version, platforms=plats))
    return tags | set(compatible_tags(version, f"cp{python.replace('.', '')}", plats))


def index_files(names: list[str]) -> dict[str, list[dict]]:
    """The index's files of each project in *names* (PEP 691 JSON), over one kept-alive connection
    (one name lookup: this resolver drops some of many parallel ones)."""
    conn = http.client.HTTPSConnection(INDEX_HOST, timeout=120, context=TLS)
    out = {}
    try:
        for name in names:
            conn.request("GET", f"/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, f"{INDEX_HOST}/simple/{name}/: HTTP {resp.status}"
            out[name] = json.loads(body)["files"]
    finally:
        conn.close()
    return out


@pytest.fixture(scope="module")
def index() -> dict[str, list[dict]]:
    """Each pinned project's wheels of the pinned version, read from the index in parallel."""
    lock = pinned()
    names = sorted(lock)
    files: dict[str, list[dict]] = {}
    with ThreadPoolExecutor(4) as pool:
        for part in pool.map(index_files, [names[i::4] for i in range(4)]):
            files.update(part)
    return {
        n: [f for f in files[n] if wheel_version(f) == v and not f.get("yanked")] for n, v in lock.items()
    }


def wheel_version(file: dict) -> str | None:
    """The version of a wheel on the index (None for sdists and names packaging cannot read)."""
    try:
        return str(parse_wheel_filename(file["filename"])[1])
    except (InvalidWheelFilename, InvalidVersion):
        return None


def fits(wheel: dict, python: str, tags: set[Tag]) -> bool:
    requires = wheel.get("requires-python")
    if requires and python + ".0" not in SpecifierSet(requires):
        return False
    return bool(parse_wheel_filename(wheel["filename"])[3] & tags)


def test_every_pin_has_a_wheel_for_each_supported_python(index):
    """What roles/vllm installs with --only-binary on Debian 12 (3.11) and Ubuntu 24.04 (3.12)."""
    assert {"vllm", "lmcache", "torch"} <= index.keys()
    for python in supported_pythons():
        tags = installable(python)
        missing = [
            f"{n}=={pinned()[n]}" for n, ws in index.items() if not any(fits(w, python, tags) for w in ws)
        ]
        assert not missing, f"Python {python}: no installable wheel on the index for {missing}"


def test_ubuntu_2204s_python_cannot_install_the_set(index):
    """Python 3.10 (Ubuntu 22.04) is refused by vLLM's Requires-Python, so the roles do not list it."""
    assert index["vllm"], "no vllm wheel of the pinned version on the index"
    assert not any(fits(w, "3.10", installable("3.10")) for w in index["vllm"])
    assert all(not SpecifierSet(w["requires-python"]).contains("3.10.0") for w in index["vllm"])
    assert "Ubuntu 22.04" not in role_vars("vllm")["vllm_supported_os"]


def lmcache_requires(index: dict, tmp: Path) -> list[str]:
    """Requires-Dist of the pinned LMCache wheel for the first supported Python (downloaded)."""
    python = supported_pythons()[0]
    wheel = next(w for w in index["lmcache"] if fits(w, python, installable(python)))
    path = tmp / wheel["filename"]
    with urllib.request.urlopen(wheel["url"], timeout=300, context=TLS) as r:
        path.write_bytes(r.read())
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Requires-Dist:")]


def test_cuda_major_of_the_set_is_the_drivers(index, tmp_path):
    """torch's libcudart (the pinned nvidia-cuda-runtime) gives the CUDA major; LMCache's wheel asks
    for the same major's cupy; the driver role's CUDA major and the branch that major needs follow
    from it, and every inventory's branch must reach it."""
    major = int(pinned()["nvidia-cuda-runtime"].split(".")[0])
    assert any(r.startswith(f"cupy-cuda{major}x") for r in lmcache_requires(index, tmp_path))
    assert role_vars("nvidia_driver", "defaults")["nvidia_driver_cuda_major"] == major
    minimum = role_vars("nvidia_driver")["nvidia_driver_min_branch"][major]
    assert minimum == 580  # CUDA 13.x needs a 580+ driver (NVIDIA's CUDA release notes)
    branches = [role_vars("nvidia_driver", "defaults")["nvidia_driver_branch"]]
    branches += [
        yaml.safe_load(p.read_text()).get("nvidia_driver_branch")
        for p in REPO.glob("inventory/*/group_vars/gpu.yml")
    ]
    assert all(int(b) >= minimum for b in branches if b is not None), branches


def resolve(python: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """pip's resolution of the lock with dependencies for CPython *python* on manylinux x86_64."""
    report = tmp_path / f"report-{python}.json"
    cmd = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "install"]
    cmd += ["--dry-run", "--ignore-installed", "--quiet", "--report", str(report)]
    cmd += ["--target", str(tmp_path / f"t{python}"), "--only-binary", ":all:"]
    cmd += ["--python-version", python, "--implementation", "cp"]
    cmd += [a for p in [*platforms(python), "any"] for a in ("--platform", p)]
    cmd += ["--cert", CA, "-r", str(LOCK)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800)


def test_pip_resolves_exactly_the_lock_for_each_supported_python(request, tmp_path):
    """The lock is complete and consistent: pip, free to pick, installs exactly it (--pinned-set)."""
    if not request.config.option.pinned_set:
        pytest.skip("pip downloads every wheel of the set (about 4 GB per Python): run with --pinned-set")
    pythons = supported_pythons()
    with ThreadPoolExecutor(len(pythons)) as pool:
        procs = dict(zip(pythons, pool.map(lambda p: resolve(p, tmp_path), pythons), strict=True))
    lock = pinned()
    for python, proc in procs.items():
        assert proc.returncode == 0, f"Python {python}: {proc.stderr[-3000:]}"
        report = json.loads((tmp_path / f"report-{python}.json").read_text())
        got = {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}
        assert got == lock, f"Python {python}: pip resolves another set than the lock"
        wheels = [i["download_info"]["url"].rsplit("/", 1)[-1] for i in report["install"]]
        torch = next(w for w in wheels if w.startswith("torch-"))
        assert f"-cp{python.replace('.', '')}-" in torch, torch  # pip took this Python's own wheels
