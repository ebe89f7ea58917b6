"""Node checks for the `dynamo` groups (etcd, the frontend with its router, vLLM workers).

Each check runs on the hosts of its own group and skips where Dynamo is off
(``dynamo_enabled`` false: the lab's default; ``--set dynamo_enabled=true`` after a run of
``site.yml -e dynamo_enabled=true``). An inventory without the groups collects no host here.
"""

from __future__ import annotations

import json
import shlex

import pytest

testinfra_hosts = ["ansible://dynamo"]


@pytest.fixture(scope="module")
def dynamo(hostvars):
    if not hostvars.get("dynamo_enabled", False):
        pytest.skip("dynamo_enabled is false in this inventory (Dynamo is off)")
    return set(hostvars.get("group_names", []))


def _only(groups: set, group: str) -> None:
    if group not in groups:
        pytest.skip(f"not in group {group}")


def _get(host, url: str, body: dict | None = None) -> str:
    cmd = ["curl", "-fsS", "--max-time", "300", url]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    return host.check_output(" ".join(shlex.quote(c) for c in cmd))


def _listens_on_cluster_address_only(host, cluster_address: str, port: int) -> None:
    assert host.socket(f"tcp://{cluster_address}:{port}").is_listening, port
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening, port
    assert not host.socket(f"tcp://127.0.0.1:{port}").is_listening, port


def test_etcd_healthy_on_cluster_address(host, dynamo, expected, cluster_address):
    _only(dynamo, "dynamo_etcd")
    svc = host.service("etcd")
    assert svc.is_running and svc.is_enabled
    port = int(expected("etcd", "etcd_client_port"))
    _listens_on_cluster_address_only(host, cluster_address, port)
    health = json.loads(_get(host, f"http://{cluster_address}:{port}/health"))
    assert health["health"] == "true"


def test_frontend_serves_on_cluster_address(host, dynamo, expected, cluster_address):
    _only(dynamo, "dynamo_frontend")
    svc = host.service("dynamo-frontend")
    assert svc.is_running and svc.is_enabled
    port = int(expected("dynamo_frontend", "dynamo_frontend_port"))
    _listens_on_cluster_address_only(host, cluster_address, port)
    assert json.loads(_get(host, f"http://{cluster_address}:{port}/health"))["status"] == "healthy"
    unit = host.file("/etc/systemd/system/dynamo-frontend.service").content_string
    assert f"--router-mode {expected('dynamo_frontend', 'dynamo_frontend_router_mode')}" in unit


def test_frontend_lists_the_model_and_completes(host, dynamo, expected, cluster_address):
    """Through the frontend and its router to a worker: the model is registered and answers."""
    _only(dynamo, "dynamo_frontend")
    url = f"http://{cluster_address}:{expected('dynamo_frontend', 'dynamo_frontend_port')}"
    model = expected("vllm", "vllm_served_model_name")
    models = json.loads(_get(host, f"{url}/v1/models"))
    assert model in [m["id"] for m in models["data"]], models
    body = {
        "model": model,
        "prompt": "The quick brown fox",
        "max_tokens": 8,
        "temperature": 0,
        "ignore_eos": True,
    }
    out = json.loads(_get(host, f"{url}/v1/completions", body))
    assert out["usage"]["completion_tokens"] == 8


def test_worker_ready_on_cluster_address(host, dynamo, expected, cluster_address):
    _only(dynamo, "dynamo_worker")
    svc = host.service("dynamo-worker")
    assert svc.is_running and svc.is_enabled
    port = int(expected("dynamo_worker", "dynamo_worker_system_port"))
    _listens_on_cluster_address_only(host, cluster_address, port)
    assert json.loads(_get(host, f"http://{cluster_address}:{port}/health"))["status"] == "ready"


def test_worker_lmcache_follows_the_tier_profile(host, dynamo, hostvars):
    _only(dynamo, "dynamo_worker")
    unit = host.file("/etc/systemd/system/dynamo-worker.service").content_string
    if hostvars.get("tier_profile", "none") == "none":
        assert "LMCacheMPConnector" not in unit
    else:
        assert "LMCacheMPConnector" in unit and "PartOf=lmcache.service" in unit


def test_units_pass_systemd_analyze_verify(host, dynamo):
    units = [
        u
        for g, u in (
            ("dynamo_frontend", "dynamo-frontend.service"),
            ("dynamo_worker", "dynamo-worker.service"),
        )
        if g in dynamo
    ]
    if not units:
        pytest.skip("no Dynamo unit of ours on this node")
    out = host.run("systemd-analyze verify --man=no " + " ".join(units))
    assert out.rc == 0, out.stderr
