"""vLLM's pinned CUDA set (roles/vllm/files/requirements-cuda.txt), resolved by pip for each supported
OS's Python (metadata only: ``--dry-run --report``, nothing installed), read for its CUDA major, and
checked against the driver branch the roles and the example inventory install.

Needs PyPI (one of the package registries these machines reach); about 1.5 min for both Pythons.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from scenario import REPO

LOCK = REPO / "roles" / "vllm" / "files" / "requirements-cuda.txt"
# glibc of each release: the newest manylinux tag its wheels may carry (Debian 12: 2.36,
# Ubuntu 24.04: 2.39, Ubuntu 22.04: 2.35).
GLIBC = {"3.11": 36, "3.12": 39, "3.10": 35}


def role_vars(role: str, part: str = "vars") -> dict:
    return yaml.safe_load((REPO / "roles" / role / part / "main.yml").read_text())


def pinned() -> dict[str, str]:
    pins = [ln.split("==") for ln in LOCK.read_text().splitlines() if ln and not ln.startswith("#")]
    return {canonical(n): v for n, v in pins}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(python: str, tmp_path: Path, *requirements: str) -> subprocess.CompletedProcess:
    """pip's resolution of *requirements* (default: the lock) with dependencies for CPython *python*
    on manylinux x86_64."""
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(17, GLIBC[python] + 1)]
    report = tmp_path / f"report-{python}.json"
    cmd = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "install"]
    cmd += ["--dry-run", "--ignore-installed", "--quiet", "--report", str(report)]
    cmd += ["--target", str(tmp_path / f"t{python}"), "--only-binary", ":all:"]
    cmd += ["--python-version", python, "--implementation", "cp"]
    cmd += [a for p in [*platforms, "manylinux2014_x86_64", "linux_x86_64", "any"] for a in ("--platform", p)]
    cmd += ["--cert", "/etc/ssl/certs/ca-certificates.crt", *(requirements or ("-r", str(LOCK)))]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory) -> dict[str, dict]:
    """Each supported Python's pip report, resolved in parallel (network-bound)."""
    tmp = tmp_path_factory.mktemp("pip")
    pythons = sorted(set(role_vars("vllm")["vllm_supported_os"].values()))
    with ThreadPoolExecutor(len(pythons)) as pool:
        procs = dict(zip(pythons, pool.map(lambda p: resolve(p, tmp), pythons), strict=True))
    for python, proc in procs.items():
        assert proc.returncode == 0, f"Python {python}: {proc.stderr[-3000:]}"
    return {p: json.loads((tmp / f"report-{p}.json").read_text()) for p in pythons}


def installed(report: dict) -> dict[str, str]:
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}


def test_the_lock_is_complete_and_consistent_for_each_supported_python(resolutions):
    lock = pinned()
    assert {"vllm", "lmcache", "torch"} <= lock.keys()
    for python, report in resolutions.items():
        got = installed(report)
        assert got == lock, f"Python {python}: pip resolves another set than the lock"
        wheels = [i["download_info"]["url"].rsplit("/", 1)[-1] for i in report["install"]]
        tag = "cp" + python.replace(".", "")
        torch = next(w for w in wheels if w.startswith("torch-"))
        assert f"-{tag}-" in torch, torch  # pip took this Python's own wheels


def test_cuda_major_of_the_set_is_the_drivers(resolutions):
    """torch's libcudart (nvidia-cuda-runtime) gives the CUDA major; the driver role's CUDA major
    and the branch that major needs follow from it, and every inventory's branch must reach it."""
    report = next(iter(resolutions.values()))
    major = int(installed(report)["nvidia-cuda-runtime"].split(".")[0])
    lmcache = next(i for i in report["install"] if i["metadata"]["name"] == "lmcache")
    assert f"cupy-cuda{major}x" in lmcache["metadata"]["requires_dist"]
    assert role_vars("nvidia_driver", "defaults")["nvidia_driver_cuda_major"] == major
    minimum = role_vars("nvidia_driver")["nvidia_driver_min_branch"][major]
    assert minimum == 580  # CUDA 13.x needs a 580+ driver (NVIDIA's CUDA release notes)
    branches = [role_vars("nvidia_driver", "defaults")["nvidia_driver_branch"]]
    branches += [
        yaml.safe_load(p.read_text()).get("nvidia_driver_branch")
        for p in REPO.glob("inventory/*/group_vars/gpu.yml")
    ]
    assert all(int(b) >= minimum for b in branches if b is not None), branches


def test_ubuntu_2204s_python_cannot_install_the_set(tmp_path):
    """Python 3.10 (Ubuntu 22.04) is refused by vLLM's Requires-Python, so the roles do not list it."""
    vllm = next(f"vllm=={v}" for n, v in pinned().items() if n == "vllm")
    proc = resolve("3.10", tmp_path, vllm)
    assert proc.returncode != 0
    assert re.search(r"No matching distribution found for vllm==", proc.stderr), proc.stderr[-2000:]
    assert re.search(r"0\.32\.0 Requires-Python [<>=.,0-9]*>=3\.11", proc.stderr), proc.stderr[-2000:]
    assert "Ubuntu 22.04" not in role_vars("vllm")["vllm_supported_os"]
