"""The preflight refuses GPU-path values that cannot serve, naming the variable, before anything
changes: each case is the bare-metal example with one bad value, through the real preflight."""

from __future__ import annotations

import pytest
from scenario import DYNAMO, render

SMALL_SHM = [{"mount": "/dev/shm", "fstype": "tmpfs", "size_total": 16 * 1024**3}]

CASES = [
    ("driver branch older than CUDA 13 needs", {"nvidia_driver_branch": "570"},
     "nvidia_driver_branch 570 is older than CUDA 13"),
    ("Debian's own driver (535)", {"nvidia_driver_source": "distro"},
     "Debian 12's own driver is branch 535"),
    ("two instances on one GPU",
     {"vllm_instances": [{"name": "a", "port": 8000, "gpus": "0"}, {"name": "b", "port": 8001, "gpus": "0"}]},
     "vllm_instances share GPUs"),
    ("GPU count is not tensor_parallel_size",
     {"vllm_instances": [{"name": "a", "port": 8000, "gpus": "0", "tensor_parallel_size": 2}]},
     "one per tensor-parallel rank: tensor_parallel_size is 2"),
    ("an instance without gpus", {"vllm_instances": [{"name": "a", "port": 8000}]},
     "vllm_instances a: gpus must list"),
    ("KV blocks cannot hold max_model_len", {"vllm_num_kv_blocks": 1000},
     "vllm_num_kv_blocks 1000 x 16 tokens per block"),
    ("/dev/shm smaller than the L1", {"gpu_scenario_host_facts": {"gpu-node01": {"mounts": SMALL_SHM}}},
     "is smaller than the LMCache L1 (64 GiB, lmcache_dram_size_gb"),
    ("context length beyond the model's", {"vllm_max_model_len": 200000},
     "vllm_max_model_len 200000 is beyond what the model at"),
    ("empty served model name", {"vllm_served_model_name": ""}, "vllm_served_model_name must not be empty"),
    ("arm64 serving node", {"gpu_scenario_host_facts": {"gpu-node01": {"architecture": "aarch64"}}},
     "for CUDA on x86_64 only"),
    # One check per variable in every role: the wrong variable is named first, with its value.
    ("KV port that is SSH's", {"kv_port": 22},
     "kvrocks_port (kv_port) must be a port 1-65535 other than SSH's (22), got 22"),
    ("SSD tier mount point not absolute", {"nvme_mount_point": "srv/nvme"},
     "nvme_mount_point must be an absolute path, got 'srv/nvme'"),
    ("janitor's low mark above its high mark", {"kv_janitor_low": 0.95},
     "kv_janitor_low must be > 0 and below kv_janitor_high (0.9), got 0.95"),
    ("unknown fabric manager setting", {"nvidia_driver_fabric_manager": "maybe"},
     "nvidia_driver_fabric_manager must be auto, true or false, got 'maybe'"),
    ("SSH source that is not a CIDR", {"firewall_ssh_sources": ["the office"]},
     "firewall_ssh_sources must be CIDRs (like 10.77.0.0/24), got ['the office']"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "variables", "message"), CASES, ids=[c[0] for c in CASES])
def test_preflight_refuses(tmp_path, case, variables, message):
    r = render(tmp_path, limit="gpu-node01", **variables)
    assert r.returncode != 0, case
    assert message in r.failure(), r.failure()
    assert not r.root.exists()  # stopped before any role rendered anything


def test_preflight_refuses_ubuntu_2204_for_serving(tmp_path):
    r = render(tmp_path, "Ubuntu 22.04", limit="gpu-node01")
    assert r.returncode != 0
    assert "runs Ubuntu 22.04 on x86_64: vLLM 0.32.0's pinned set" in r.failure(), r.failure()


def test_preflight_refuses_a_dynamo_worker_on_an_instances_gpu(tmp_path):
    r = render(
        tmp_path, inventories=[DYNAMO], limit="gpu-node01", dynamo_enabled=True, dynamo_worker_gpus="1"
    )
    assert r.returncode != 0
    assert "dynamo_worker_gpus must list the worker's own GPU indices" in r.failure(), r.failure()


def test_preflight_names_each_wrong_variable_and_only_it(tmp_path):
    """One check per variable (roles/lmcache): a bad port is named as itself, not as the chunk
    size checked beside it; two bad values are both named; SSH's port is refused for a service."""
    for d in "abc":
        (tmp_path / d).mkdir()
    r = render(tmp_path / "a", limit="gpu-node01", lmcache_port=70000)
    assert r.returncode != 0
    assert "lmcache_port must be a port 1-65535 other than SSH's (22), got 70000" in r.failure(), r.failure()
    assert "lmcache_chunk_size" not in r.failure()
    r = render(tmp_path / "b", limit="gpu-node01", lmcache_port=70000, lmcache_chunk_size=200)
    assert (
        "lmcache_port must be" in r.failure()
        and "lmcache_chunk_size must be a positive multiple" in r.failure()
    )
    r = render(tmp_path / "c", limit="gpu-node01", lmcache_http_port=22)
    assert (
        "lmcache_http_port must be a port 1-65535 other than lmcache_port (5555) and SSH's (22)"
        in r.failure()
    )
    assert not r.root.exists()


def test_converted_roles_name_the_wrong_variable_and_only_it(tmp_path):
    """One check per variable in the other roles too (here roles/nvme on the GPU node and
    roles/router on the front node): a wrong value is named as itself with its value, not in one
    message about every setting checked beside it; two wrong values are both named."""
    for d in "ab":
        (tmp_path / d).mkdir()
    r = render(tmp_path / "a", limit="gpu-node01", nvme_fs_label="a-label-too-long")
    assert r.returncode != 0
    failure = r.failure()
    assert (
        "nvme_fs_label must be 1-12 characters for xfs or 1-16 for ext4 (nvme_fstype xfs), "
        "got 'a-label-too-long'" in failure
    ), failure
    assert "nvme_mount_by" not in failure and "nvme_mount_point" not in failure
    r = render(tmp_path / "b", limit="front01", router_cb_timeout_s=0, router_prometheus_port=22)
    assert r.returncode != 0
    failure = r.failure()
    assert "router_cb_timeout_s must be >= 1 second, got 0" in failure, failure
    assert (
        "router_prometheus_port must be a port 1-65535 other than router_port (8100) and SSH's (22), got 22"
        in failure
    )
    assert "router_health" not in failure
    assert not r.root.exists()
