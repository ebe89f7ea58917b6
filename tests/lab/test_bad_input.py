"""Bad inventory values are refused by site.yml's preflight, before anything changes, with a message
naming the variable; bad `fab run-bench` arguments likewise (tests/unit/test_bench.py has them all).

Each case runs the real site.yml against the lab with one bad value (-e); the run must fail, say
the variable's name, change nothing on any node and start no play after the preflight."""

from __future__ import annotations

import json

import pytest

from kvstack import provision

#: (name, extra vars as JSON, text the failure must contain, or several texts)
CASES = [
    ("unknown tier profile", {"tier_profile": "ssd"}, "tier_profile"),
    ("node DRAM tier larger than memory", {"lmcache_dram_size_gb": 4096}, "lmcache_dram_size_gb"),
    ("vLLM KV space larger than memory", {"vllm_cpu_kvcache_space_gb": 4096}, "vllm_cpu_kvcache_space_gb"),
    (
        "KV server memory larger than the node",
        {"redis_server_maxmemory_mb": 10_000_000},
        "redis_server_maxmemory_mb",
    ),
    ("KV-tier budget larger than the KV node's memory", {"kv_capacity_gb": 100_000}, "kv_capacity_gb"),
    ("chunk size not a multiple of the block size", {"lmcache_chunk_size": 200}, "lmcache_chunk_size"),
    ("chunk size zero", {"lmcache_chunk_size": 0}, "lmcache_chunk_size"),
    ("KV port out of range", {"kv_port": 70000}, "kv_port"),
    # Values one check loop refuses together: each is named (one run, every wrong one listed).
    (
        "LMCache port out of range and a worker count of zero",
        {"lmcache_port": 99999, "lmcache_max_gpu_workers": 0},
        ("lmcache_port must be a port 1-65535", "lmcache_max_gpu_workers must be >= 1"),
    ),
    (
        "CPU bind to CPUs the node lacks and an empty served model name",
        {"vllm_cpu_omp_threads_bind": "0-511", "vllm_served_model_name": ""},
        ("vllm_cpu_omp_threads_bind must be", "vllm_served_model_name must not be empty"),
    ),
    ("vLLM port that is SSH's", {"vllm_instances": [{"name": "main", "port": 22}]}, "other than SSH's (22)"),
    (
        "context length beyond the model's",
        {"vllm_max_model_len": 16000},
        "vllm_max_model_len 16000 is beyond",
    ),
    (
        "vLLM port clashing with LMCache's",
        {"vllm_instances": [{"name": "main", "port": 5555}]},
        "vllm_lmcache_mp_port",
    ),
    ("missing KV password", {"kv_password": ""}, "kv_password"),
    (
        "model path that does not exist",
        {"vllm_model_path": "/srv/models/nope", "vllm_model_generate": False},
        "vllm_model_path",
    ),
    ("unknown dtype", {"vllm_dtype": "float8"}, "vllm_dtype"),
    ("zero context length", {"vllm_max_model_len": 0}, "vllm_max_model_len"),
    ("negative KV block cap", {"vllm_num_kv_blocks": -1}, "vllm_num_kv_blocks"),
    ("unknown KV server", {"kv_server": "memcached"}, "kv_server"),
    ("cluster network no node is on", {"cluster_network_cidr": "192.168.250.0/24"}, "cluster_network_cidr"),
    ("unknown routing policy", {"router_policy": "fastest"}, "router_policy"),
    ("router port clashing with its metrics port", {"router_port": 29000}, "router_port"),
    ("firewall network that is not a CIDR", {"firewall_ssh_sources": ["the office"]}, "firewall_ssh_sources"),
]


@pytest.mark.parametrize(("extra", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rejected_before_any_change(up_lab, extra, named):
    out = provision.playbook(
        "site.yml", extra_args=["-e", json.dumps(extra)], capture=True, check_rc=False, echo=False
    )
    text = out.stdout
    assert out.returncode != 0, text[-2000:]
    for name in (named,) if isinstance(named, str) else named:
        assert name in text, text[-3000:]
    if "lmcache_port" in extra:  # named as itself, not as the chunk size once checked beside it
        assert "lmcache_chunk_size must be" not in text, text[-3000:]
    rec = provision.recap(text)
    assert rec and all(c["changed"] == 0 for c in rec.values()), rec
    assert "PLAY [Base configuration" not in text  # nothing after the preflight ran


def test_lmcache_refuses_an_unknown_server_argument_before_writing_the_unit(up_lab):
    """LMCache's own parser (roles/lmcache, before the unit is written) catches what no preflight
    rule knows: here an argument `lmcache server` does not have."""
    node = next(n for n in up_lab.nodes if "serve" in n)
    extra = {"lmcache_extra_args": ["--no-such-lmcache-flag"]}
    out = provision.playbook(
        "site.yml",
        limit=node,
        tags="lmcache",
        extra_args=["-e", json.dumps(extra)],
        capture=True,
        check_rc=False,
        echo=False,
    )
    assert out.returncode != 0
    assert "unrecognized arguments: --no-such-lmcache-flag" in out.stdout, out.stdout[-3000:]
    assert provision.recap(out.stdout)[node]["changed"] == 0
