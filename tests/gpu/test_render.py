"""The roles rendered for GPU nodes (vllm_platform cuda), as the bare-metal example inventory and a
second scenario (Ubuntu 24.04, tensor parallel, Dynamo, a Grace node) would get them.

The real preflight accepts both; systemd's own parser (``systemd-analyze verify``) accepts every
unit; what each unit runs is what a CUDA node needs: its GPUs in nvidia-smi's order, the UVM device
made as root, LMCache serving both transfer modes with pinned memory, packages by NVIDIA's names.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from scenario import DYNAMO, TP_SCENARIO, exec_start, render

# Executables the roles install on the node, not on this controller: systemd-analyze reports them
# as missing here and nothing else may be reported.
NODE_EXECUTABLES = {
    "/opt/kvstack/venv/bin/python",
    "/opt/kvstack/venv/bin/lmcache",
    "/usr/bin/nvidia-modprobe",
    "/usr/bin/nvidia-persistenced",
}


def units(root: Path) -> list[str]:
    """Unit names to verify under a host's render root (template instances by their drop-ins)."""
    d = root / "etc" / "systemd" / "system"
    names = [p.name for p in d.glob("*.service") if "@." not in p.name]
    names += [p.name.removesuffix(".d") for p in d.glob("*@*.service.d")]
    return sorted(names)


def verify(root: Path, name: str) -> list[str]:
    """What systemd-analyze verify reports for unit *name*, beyond executables only nodes have."""
    d = root / "etc" / "systemd" / "system"
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{d}:", "SYSTEMD_LOG_COLOR": "0"}
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", name], env=env, capture_output=True, text=True, timeout=60
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    missing = re.compile(r"^\S+: Command (\S+) is not executable: No such file or directory$")
    return [ln for ln in lines if not ((m := missing.match(ln)) and m.group(1) in NODE_EXECUTABLES)]


@pytest.mark.parametrize("scenario", ["example", "tp_ubuntu"])
def test_systemd_accepts_every_rendered_unit(scenario, request):
    rendered = request.getfixturevalue(scenario)
    checked = 0
    for host in sorted(p.name for p in rendered.root.iterdir()):
        for name in units(rendered.host(host)):
            assert verify(rendered.host(host), name) == [], f"{host} {name}"
            checked += 1
    assert checked >= 5


def test_each_instance_gets_its_gpus_in_nvidia_smi_order(example, tp_ubuntu):
    for r, expect in ((example, {"gpu0": "0", "gpu1": "1"}), (tp_ubuntu, {"tp01": "0,1", "tp23": "2,3"})):
        base = r.unit("gpu-node01", "vllm@.service")
        assert "Environment=CUDA_DEVICE_ORDER=PCI_BUS_ID" in base
        for name, gpus in expect.items():
            dropin = r.unit("gpu-node01", f"vllm@{name}.service.d/kvstack.conf")
            assert f"Environment=CUDA_VISIBLE_DEVICES={gpus}" in dropin
            argv = exec_start(dropin)
            assert argv[1:3] == ["-m", "vllm.entrypoints.launchers.api_server.entry"]
            assert argv[argv.index("--tensor-parallel-size") + 1] == str(len(gpus.split(",")))
            assert "--gpu-memory-utilization" in argv


def test_gpu_units_make_the_uvm_device_as_root_and_stay_sandboxed(example, tp_ubuntu):
    for r, name in (
        (example, "vllm@.service"),
        (example, "lmcache.service"),
        (tp_ubuntu, "dynamo-worker.service"),
    ):
        unit = r.unit("gpu-node01", name)
        assert "ExecStartPre=+/usr/bin/nvidia-modprobe -u -c=0" in unit, name
        assert "NoNewPrivileges=true" in unit and "LimitMEMLOCK=infinity" in unit, name
        assert re.search(r"^After=.*nvidia-persistenced\.service", unit, re.M), name
    worker = tp_ubuntu.unit("gpu-node01", "dynamo-worker.service")
    assert "Environment=CUDA_VISIBLE_DEVICES=4" in worker


def test_lmcache_serves_both_transfer_modes_for_every_instance(example, tp_ubuntu):
    for r in (example, tp_ubuntu):
        unit = r.unit("gpu-node01", "lmcache.service")
        argv = exec_start(unit)
        assert argv[argv.index("--supported-transfer-mode") + 1] == "auto"
        assert argv[argv.index("--max-gpu-workers") + 1] == "2"  # two instances per node
        assert "UnsetEnvironment=CUDA_VISIBLE_DEVICES" in unit


def test_driver_packages_follow_nvidias_names(example, tp_ubuntu):
    debian = json.loads((example.host("gpu-node01") / "nvidia_driver.json").read_text())
    assert debian["keyring_url"].endswith("/debian12/x86_64/cuda-keyring_1.1-1_all.deb")
    # Driver Installation Guide, version locking: the pinning package first, then the driver.
    assert debian["packages"] == ["nvidia-driver-pinning-580", "nvidia-open", "nvidia-modprobe"]
    assert debian["headers"] == ["linux-headers-6.1.0-28-amd64", "linux-headers-amd64"]
    assert debian["fabric_manager"] == "nvidia-fabricmanager"
    ubuntu = json.loads((tp_ubuntu.host("gpu-node01") / "nvidia_driver.json").read_text())
    assert ubuntu["packages"] == ["nvidia-driver-580-server-open", "nvidia-modprobe"]
    assert ubuntu["headers"] == ["linux-headers-6.8.0-49-generic", "linux-headers-generic"]
    assert ubuntu["fabric_manager"] == "nvidia-fabricmanager-580"


def test_grace_nodes_use_nvidias_sbsa_repository(tmp_path):
    r = render(tmp_path, "Ubuntu 24.04", inventories=[DYNAMO], **TP_SCENARIO)
    assert r.returncode == 0, r.failure()
    grace = json.loads((r.host("grace01") / "nvidia_driver.json").read_text())
    assert grace["keyring_url"].endswith("/ubuntu2404/sbsa/cuda-keyring_1.1-1_all.deb")


def test_persistence_mode_is_on_in_nvidia_persistenceds_unit(example):
    dropin = example.unit("gpu-node01", "nvidia-persistenced.service.d/kvstack.conf")
    starts = [ln for ln in dropin.splitlines() if ln.startswith("ExecStart=")]
    assert starts[0] == "ExecStart=" and "--no-persistence-mode" not in starts[1]
