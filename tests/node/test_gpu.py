"""Node checks for the `gpu` group: the driver works, matches the pinned branch, persistence on.

They run where the inventory has GPU nodes (the lab's gpu group is empty).
"""

from __future__ import annotations

testinfra_hosts = ["ansible://gpu"]


def test_nvidia_smi_lists_gpus(host):
    out = host.check_output("nvidia-smi --query-gpu=name --format=csv,noheader")
    assert out.strip()


def test_driver_matches_the_pinned_branch(host, expected):
    version = host.check_output("nvidia-smi --query-gpu=driver_version --format=csv,noheader").splitlines()[0]
    assert version.split(".")[0] == str(expected("nvidia_driver", "nvidia_driver_branch"))


def test_persistence_mode_on(host, expected):
    if not expected("nvidia_driver", "nvidia_driver_persistence_mode"):
        return
    modes = host.check_output("nvidia-smi --query-gpu=persistence_mode --format=csv,noheader").splitlines()
    assert modes and all(m.strip() == "Enabled" for m in modes)
    assert host.service("nvidia-persistenced").is_running


def test_uvm_device_node_exists(host):
    """CUDA needs /dev/nvidia-uvm; the serving units make it as root before they start."""
    assert host.file("/dev/nvidia-uvm").exists
    assert host.file("/usr/bin/nvidia-modprobe").mode & 0o4000  # setuid, as packaged
