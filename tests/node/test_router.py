"""Node checks for the `router` group: vllm-router in front of the serving nodes."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from addresses import access_address

testinfra_hosts = ["ansible://router"]


@pytest.fixture(scope="module")
def router(host, hostvars, expected, cluster_address, inv):
    backends = hostvars.get("router_backends") or [
        f"http://{access_address(h)}:{inst['port']}"
        for name, h in inv.hosts("serving").items()
        if name in hostvars.get("router_backend_hosts", list(inv.hosts("serving")))
        for inst in h.get("vllm_instances", [{"port": 8000}])
    ]
    port = int(expected("router", "router_port"))
    metrics_port = int(expected("router", "router_prometheus_port"))
    return {
        "url": f"http://{cluster_address}:{port}",
        "port": port,
        "metrics": f"http://{cluster_address}:{metrics_port}/metrics",
        "policy": expected("router", "router_policy"),
        "backends": backends,
        "api_key": hostvars.get("vllm_api_key", ""),
    }


def test_router_unit_active_with_its_policy(host, router):
    svc = host.service("vllm-router")
    assert svc.is_running
    assert svc.is_enabled
    exec_start = host.check_output("systemctl show -p ExecStart --value vllm-router")
    assert f"--policy {router['policy']}" in exec_start
    for url in router["backends"]:
        assert url in exec_start


def test_router_listens_on_its_address_only(host, router, cluster_address):
    assert host.socket(f"tcp://{cluster_address}:{router['port']}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{router['port']}").is_listening


def test_every_backend_healthy(host, router):
    text = host.check_output(f"curl -fsS {router['metrics']}")
    health = dict(re.findall(r'^vllm_router_worker_health\{worker="([^"]+)"\} (\S+)$', text, re.M))
    assert set(health) == set(router["backends"]), health
    assert all(float(v) == 1 for v in health.values()), health


def test_completion_through_the_router(host, router):
    body = {"prompt": "The quick brown fox", "max_tokens": 4, "temperature": 0}
    cmd = [
        "curl",
        "-fsS",
        "--max-time",
        "120",
        "-H",
        "Content-Type: application/json",
        "-d",
        json.dumps(body),
    ]
    if router["api_key"]:
        cmd += ["-H", f"Authorization: Bearer {router['api_key']}"]
    out = json.loads(host.check_output(" ".join(map(shlex.quote, [*cmd, router["url"] + "/v1/completions"]))))
    assert out["usage"]["completion_tokens"] == 4
