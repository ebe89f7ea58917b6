"""Monitoring on the lab (README "Operating"): Prometheus on lab-kv1 scrapes every exporter the
inventory implies, the recording rules return values after a little traffic through the router,
`fab status` shows them per node, and stopping the KV server fires KvServerDown within the rule's
`for` plus two scrape intervals, read from Prometheus' HTTP API (and Alertmanager receives it).
The KV server is started again and every serving node's LMCache reconnects before the test ends."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from datetime import datetime

import pytest
import yaml

from kvstack import REPO, faults, stack
from kvstack import status as st
from kvstack.waits import wait_until

KV_NODE = "lab-kv1"
#: KvServerDown's `for` in roles/prometheus/files/rules/kvstack-alerts.yml
ALERTS = yaml.safe_load((REPO / "roles/prometheus/files/rules/kvstack-alerts.yml").read_text())
KV_DOWN_FOR_S = next(
    int(r["for"].rstrip("m")) * 60
    for g in ALERTS["groups"]
    for r in g["rules"]
    if r.get("alert") == "KvServerDown"
)


@pytest.fixture(scope="module")
def ep(up_lab):
    return stack.fetch_endpoints(None)


@pytest.fixture(scope="module")
def prom(up_lab) -> dict:
    """Prometheus' URL (from the inventory, as fab status finds it) and its scrape interval."""
    url = st.prometheus_url(REPO / "inventory" / "lab")
    cfg = st.api(url, "/api/v1/status/config")["yaml"]
    interval = yaml.safe_load(cfg)["global"]["scrape_interval"]
    return {"url": url, "interval_s": float(interval.rstrip("s"))}


def _targets(url: str) -> list[dict]:
    return st.api(url, "/api/v1/targets")["activeTargets"]


def test_every_scrape_target_is_up(prom):
    """Every job the inventory implies has its targets, and all of them are up."""
    want = {"node": 3, "vllm": 2, "lmcache": 2, "router": 1, "kv": 1, "prometheus": 1, "alertmanager": 1}

    def all_scraped() -> list[dict]:
        ts = _targets(prom["url"])
        return ts if ts and all(t["health"] != "unknown" for t in ts) else []

    targets = wait_until(all_scraped, 60, 2, lambda: "targets not all scraped yet")
    jobs: dict[str, int] = {}
    for t in targets:
        jobs[t["labels"]["job"]] = jobs.get(t["labels"]["job"], 0) + 1
    assert jobs == want
    down = [(t["labels"]["job"], t["labels"]["node"], t["lastError"]) for t in targets if t["health"] != "up"]
    assert down == []


def _traffic_on_every_tier(ep, vllm: dict, model: str, key: str | None) -> None:
    """On each serving node: a fresh prompt, the same again (vLLM's own cache), again with vLLM's
    cache emptied (LMCache's L1), then another node's prompt with vLLM's cache emptied (the KV
    tier: this node's L1 never held it); one request through the router."""
    nodes = list(vllm)
    prompts = {n: f"{uuid.uuid4()} monitoring {n} " + "tiers " * 700 for n in nodes}
    for n in nodes:
        stack.complete(vllm[n]["url"], model, prompts[n], api_key=key)
    for n, other in zip(nodes, nodes[1:] + nodes[:1], strict=True):
        stack.complete(vllm[n]["url"], model, prompts[n], api_key=key)
        for p in (prompts[n], prompts[other]):
            assert stack.reset_prefix_cache(vllm[n])
            stack.complete(vllm[n]["url"], model, p, api_key=key)
    router = next(iter(ep.router.values()))
    stack.complete(router["url"], model, prompts[nodes[0]], api_key=key)


def test_recording_rules_and_status_view_after_traffic(ep, prom):
    """A little traffic that reaches every tier on every serving node (_traffic_on_every_tier):
    each node's hit rate per tier, requests/s and TTFT P95, and the KV tier's use against its
    budget, come back from the recording rules, and `fab status --json` shows them. Two rounds,
    two scrapes apart: LMCache creates its lookup counters at their first use, and rate() counts
    no increase into a series' first sample, so the first round only brings the series into being."""
    nodes = list(ep.serving)
    vllm = {n: ep.vllm(n) for n in nodes}
    model, key = vllm[nodes[0]]["model"], vllm[nodes[0]].get("api_key") or None
    _traffic_on_every_tier(ep, vllm, model, key)
    time.sleep(2 * prom["interval_s"] + 1)
    _traffic_on_every_tier(ep, vllm, model, key)

    def recorded() -> dict:
        reading = st.collect(prom["url"]).as_dict()
        cols = ("requests_per_s", "hit_vllm", "hit_l1", "hit_l2", "ttft_p95_s")
        ok = all((reading["nodes"].get(n, {}).get(c) or 0) > 0 for n in nodes for c in cols)
        return reading if ok and reading["nodes"].get(KV_NODE, {}).get("kv_budget_bytes") else {}

    got = wait_until(recorded, 60, 3, lambda: f"recording rules lack values: {st.collect(prom['url']).nodes}")
    for n in nodes:
        d = got["nodes"][n]
        assert d["engine_up"] == 1
        assert 0 < d["hit_vllm"] + d["hit_l1"] + d["hit_l2"] <= 1
    kv = got["nodes"][KV_NODE]
    assert 0 < kv["kv_used_bytes"] < kv["kv_budget_bytes"]
    # the fab task, as a user runs it
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "fab"), "status", "--json"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    assert set(ep.serving) | {KV_NODE} <= set(view["nodes"])
    text = subprocess.run(
        [str(REPO / ".venv" / "bin" / "fab"), "status"], cwd=REPO, capture_output=True, text=True
    )
    assert text.returncode == 0 and all(n in text.stdout for n in view["nodes"]), text.stderr
    print(text.stdout)


def _kv_down_alert(url: str) -> dict | None:
    for a in st.api(url, "/api/v1/alerts")["alerts"]:
        if a["labels"].get("alertname") == "KvServerDown" and a["labels"].get("node") == KV_NODE:
            return a
    return None


def test_kv_server_down_fires_its_alert_in_time(ep, prom):
    """Stop the KV server: KvServerDown fires within its `for` plus two scrape intervals
    (Prometheus' activeAt: when the rule first saw it down), Alertmanager receives it; the server
    is started again and every serving node's LMCache reconnects."""
    service = ep.nodes[KV_NODE].get("kv_service") or "redis-server"
    assert _kv_down_alert(prom["url"]) is None, "KvServerDown already active before the drill"
    stopped = time.time()
    stack.run_on(ep, KV_NODE, f"systemctl stop {service}")
    try:
        limit = KV_DOWN_FOR_S + 2 * prom["interval_s"]
        alert = wait_until(
            lambda: (a := _kv_down_alert(prom["url"])) and a["state"] == "firing" and a,
            limit + 30,
            1,
            lambda: (
                f"KvServerDown not firing {limit + 30:.0f} s after the stop: {_kv_down_alert(prom['url'])}"
            ),
        )
        seen = time.time() - stopped
        active_at = _parse_time(alert["activeAt"]) - stopped
        print(
            f"KvServerDown: active {active_at:.1f} s after the stop, firing seen at {seen:.1f} s "
            f"(limit {limit:.0f} s)"
        )
        assert active_at + KV_DOWN_FOR_S <= limit + 1  # +1: the lab's nodes share the host's clock
        am = st.api(prom["url"], "/api/v1/alertmanagers")["activeAlertmanagers"][0][
            "url"
        ]  # .../api/v2/alerts
        wait_until(
            lambda: any(a["labels"].get("alertname") == "KvServerDown" for a in st.get_json(am)),
            30,
            2,
            lambda: "Alertmanager did not receive KvServerDown",
        )
    finally:
        stack.run_on(ep, KV_NODE, f"systemctl start {service}")
        for n in ep.serving:
            faults.wait_kv_clients(ep, n, timeout_s=120)


def _parse_time(text: str) -> float:
    """Prometheus' RFC 3339 time (nanoseconds allowed) as a Unix time."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float(f"0.{frac or 0}")
