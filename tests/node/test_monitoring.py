"""Node checks for the `monitoring` group: Prometheus and Alertmanager (roles/prometheus,
roles/alertmanager), on any inventory."""

from __future__ import annotations

import json
import time

import pytest

testinfra_hosts = ["ansible://monitoring"]


@pytest.fixture(scope="module")
def mon(host, expected, cluster_address):
    return {
        "prometheus": f"http://{cluster_address}:{int(expected('prometheus', 'prometheus_port'))}",
        "alertmanager": f"http://{cluster_address}:{int(expected('alertmanager', 'alertmanager_port'))}",
    }


def _get(host, url: str) -> dict:
    return json.loads(host.check_output(f"curl -fsS --max-time 10 {url}"))


@pytest.mark.parametrize(
    ("service", "key"), [("prometheus", "prometheus"), ("prometheus-alertmanager", "alertmanager")]
)
def test_service_runs_on_the_cluster_address_only(host, mon, service, key):
    svc = host.service(service)
    assert svc.is_running and svc.is_enabled
    port = int(mon[key].rsplit(":", 1)[1])
    addr = mon[key].split("//")[1].rsplit(":", 1)[0]
    assert host.socket(f"tcp://{addr}:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not host.socket("tcp://0.0.0.0:9094").is_listening  # no Alertmanager gossip port


def test_every_target_up_and_every_rule_group_healthy(host, mon):
    """Every scrape target the inventory implies answers (after its first scrape), the project's
    rule groups are loaded without errors, and Prometheus sends to its Alertmanager."""
    deadline = time.monotonic() + 60
    while True:
        targets = _get(host, f"{mon['prometheus']}/api/v1/targets")["data"]["activeTargets"]
        if all(t["health"] != "unknown" for t in targets) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert targets
    down = [
        (t["labels"]["job"], t["labels"].get("node"), t["lastError"]) for t in targets if t["health"] != "up"
    ]
    assert down == []
    groups = _get(host, f"{mon['prometheus']}/api/v1/rules")["data"]["groups"]
    names = {g["name"] for g in groups}
    assert {"kvstack-alerts", "kvstack-hit-rates", "kvstack-kv-tier", "kvstack-kv-budget"} <= names
    bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r.get("health") == "err"]
    assert bad == []
    ams = _get(host, f"{mon['prometheus']}/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
    assert [a["url"] for a in ams] == [f"{mon['alertmanager']}/api/v2/alerts"]


def test_alertmanager_config_is_not_world_readable(host):
    f = host.file("/etc/prometheus/alertmanager.yml")
    assert (f.user, f.group, f.mode) == ("root", "prometheus", 0o640)
