"""The monitoring rules and configurations, checked by the tools that read them.

- ``promtool check rules`` on the project's rule files (roles/prometheus/files/rules);
- ``promtool test rules``: every alert fires on the bad series and stays quiet on the good, and the
  recording rules compute the hit rates and the KV budget use from counters as the bench defines
  them. The cases are declared here; the expected annotations are the rule's own, with
  ``{{ $labels.x }}`` filled in (promtool compares them exactly);
- the roles' rendered ``prometheus.yml`` (``promtool check config``), KV budget rules and
  ``alertmanager.yml`` (``amtool check-config``) for the lab, the sharded lab and the bare-metal
  example inventories, with the scrape targets each inventory implies.

promtool and amtool come from Debian's packages, unpacked into .venv/bin by bootstrap.sh.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvstack import REPO

sys.path.insert(0, str(Path(__file__).parent))
from test_kvrocks_config import run_entry_point

RULES = REPO / "roles" / "prometheus" / "files" / "rules"
BIN = Path(sys.executable).parent
GiB = 1 << 30


def tool(name: str) -> str:
    """Path of promtool or amtool (bootstrap.sh puts them in .venv/bin)."""
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert path, f"{name} not found: run ./bootstrap.sh (it unpacks it from Debian's package into .venv/bin)"
    return str(path)


def alert_rules() -> dict[str, dict[str, Any]]:
    """Alert name -> its rule, from the project's alert file."""
    doc = yaml.safe_load((RULES / "kvstack-alerts.yml").read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def expected_alert(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """The alert promtool should see: the series' labels plus the rule's, and the rule's
    annotations with ``{{ $labels.x }}`` filled in from *labels*."""
    rule = alert_rules()[name]
    fill = lambda s: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), s)  # noqa: E731
    return {
        "exp_labels": {**labels, **rule.get("labels", {})},
        "exp_annotations": {k: fill(v) for k, v in rule.get("annotations", {}).items()},
    }


SERVE = {"node": "serve1", "instance": "10.0.0.11:9181", "job": "lmcache"}
VLLM = {"node": "serve1", "instance": "10.0.0.11:8000", "job": "vllm", "vllm_instance": "main"}
KV = {"node": "kv1", "instance": "10.0.0.21:9121", "job": "kv", "kv_member": "10.0.0.21:6666"}
MEMBER = {**SERVE, "member": "10.0.0.21:6666"}


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def prompt_tokens(local: str, external: str, compute: str) -> list[dict[str, str]]:
    """vLLM's prompt-token counters by source, each a promtool values string."""
    return [
        series("vllm:prompt_tokens_by_source_total", {**VLLM, "source": s}, v)
        for s, v in (
            ("local_cache_hit", local),
            ("external_kv_transfer", external),
            ("local_compute", compute),
        )
    ]


#: (alert, input series, eval time, labels of the alert expected to fire, or None: quiet)
ALERT_CASES = [
    ("KvServerDown", [series("redis_up", KV, "1 0x8")], "1m30s", KV),
    ("KvServerDown", [series("redis_up", KV, "1 0x8")], "45s", None),  # not yet for 1m
    ("KvServerDown", [series("redis_up", KV, "1x8")], "2m", None),
    ("KvServerDown", [series("up", KV, "1 0x8")], "1m30s", KV),  # exporter or host gone
    ("KvServerUnreachableFromServing", [series("kvstack_kv_member_up", MEMBER, "1 0x8")], "1m30s", MEMBER),
    ("KvServerUnreachableFromServing", [series("kvstack_kv_member_up", MEMBER, "1x8")], "2m", None),
    (
        "ServingNodeWithoutKvConnection",
        [
            series("kvstack_kv_member_connections", MEMBER, "2 0x30"),
            series("kvstack_kv_member_up", MEMBER, "1x30"),
        ],
        "6m",
        MEMBER,
    ),
    (  # the server is down: KvServerDown's case, not this one
        "ServingNodeWithoutKvConnection",
        [
            series("kvstack_kv_member_connections", MEMBER, "0x30"),
            series("kvstack_kv_member_up", MEMBER, "0x30"),
        ],
        "6m",
        None,
    ),
    (
        "ServingNodeWithoutKvConnection",
        [
            series("kvstack_kv_member_connections", MEMBER, "2x30"),
            series("kvstack_kv_member_up", MEMBER, "1x30"),
        ],
        "6m",
        None,
    ),
    (
        "LmcacheL2StoreFailures",
        [
            series("lmcache_mp_l2_store_submitted_objects_chunks_total", SERVE, "0+10x60"),
            series("lmcache_mp_l2_store_completed_objects_chunks_total", SERVE, "0+5x60"),
        ],
        "12m",
        {"node": "serve1"},
    ),
    (
        "LmcacheL2StoreFailures",
        [
            series("lmcache_mp_l2_store_submitted_objects_chunks_total", SERVE, "0+10x60"),
            series("lmcache_mp_l2_store_completed_objects_chunks_total", SERVE, "0+10x60"),
        ],
        "12m",
        None,
    ),
    (  # 80% of prompt tokens from the caches for 70 minutes, then 20%
        "KvHitRateCollapse",
        prompt_tokens("0+40x280 11200+10x120", "0+40x280 11200+10x120", "0+20x280 5600+80x120"),
        "95m",
        {"node": "serve1"},
    ),
    ("KvHitRateCollapse", prompt_tokens("0+40x400", "0+40x400", "0+20x400"), "95m", None),
    (  # 0.9 GiB of a 1 GiB budget: redis' used_memory
        "KvTierNearBudget",
        [
            series("redis_memory_used_bytes", KV, f"{int(0.9 * GiB)}x30"),
            series("node:kvstack_kv_budget_bytes", {"node": "kv1"}, f"{GiB}x30"),
        ],
        "6m",
        {"node": "kv1"},
    ),
    (  # Kvrocks: the janitor's figure (node_exporter's textfile), no used_memory
        "KvTierNearBudget",
        [
            series("kvstack_kv_used_bytes", {"node": "kv1", "job": "node"}, f"{int(0.9 * GiB)}x30"),
            series("node:kvstack_kv_budget_bytes", {"node": "kv1"}, f"{GiB}x30"),
        ],
        "6m",
        {"node": "kv1"},
    ),
    (
        "KvTierNearBudget",
        [
            series("redis_memory_used_bytes", KV, f"{int(0.5 * GiB)}x30"),
            series("node:kvstack_kv_budget_bytes", {"node": "kv1"}, f"{GiB}x30"),
        ],
        "6m",
        None,
    ),
    ("VllmDown", [series("up", VLLM, "1 0x8")], "1m30s", VLLM),
    ("VllmDown", [series("up", VLLM, "1x8")], "2m", None),
    (
        "VllmRestarting",
        [series("process_start_time_seconds", VLLM, "100 100 200 200 300 300 400")],
        "1m30s",
        VLLM,
    ),
    ("VllmRestarting", [series("process_start_time_seconds", VLLM, "100x8")], "2m", None),
    ("ScrapeTargetDown", [series("up", SERVE, "1 0x30")], "6m", SERVE),
    ("ScrapeTargetDown", [series("up", VLLM, "1 0x30")], "6m", None),  # VllmDown's case
]


def promtool_test(tmp_path: Path, tests: list[dict[str, Any]]) -> subprocess.CompletedProcess:
    """Write a promtool unit-test file over the project's rule files and run it."""
    doc = {
        "rule_files": [str(RULES / "kvstack-recording.yml"), str(RULES / "kvstack-alerts.yml")],
        "evaluation_interval": "15s",
        "tests": tests,
    }
    path = tmp_path / "rules.test.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return subprocess.run(
        [tool("promtool"), "test", "rules", str(path)], text=True, capture_output=True, timeout=120
    )


def test_rule_files_pass_promtool_check():
    out = subprocess.run(
        [tool("promtool"), "check", "rules", *map(str, sorted(RULES.glob("*.yml")))],
        text=True,
        capture_output=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_runbook_and_cases_that_fire_and_stay_quiet():
    rules = alert_rules()
    assert {n for n, r in rules.items() if not r.get("annotations", {}).get("runbook")} == set()
    fires = {c[0] for c in ALERT_CASES if c[3] is not None}
    quiet = {c[0] for c in ALERT_CASES if c[3] is None}
    assert set(rules) == fires == quiet, "each alert needs a firing and a quiet case"


@pytest.mark.parametrize(
    "case", ALERT_CASES, ids=[f"{c[0]}-{'fires' if c[3] else 'quiet'}-{i}" for i, c in enumerate(ALERT_CASES)]
)
def test_alert(tmp_path, case):
    name, inputs, at, labels = case
    test = {
        "interval": "15s",
        "input_series": inputs,
        "alert_rule_test": [
            {
                "eval_time": at,
                "alertname": name,
                "exp_alerts": [expected_alert(name, labels)] if labels else [],
            }
        ],
    }
    out = promtool_test(tmp_path, [test])
    assert out.returncode == 0, out.stdout + out.stderr


def test_recording_rules_compute_hit_rates_and_budget_use(tmp_path):
    """40% of prompt tokens from vLLM's cache, 40% through LMCache (its lookups found 3/4 in L1),
    20% computed; 0.5 GiB used of a 1 GiB budget."""
    inputs = [
        *prompt_tokens("0+40x60", "0+40x60", "0+20x60"),
        series("lmcache_mp_lookup_hit_l1_tokens_total", SERVE, "0+30x60"),
        series("lmcache_mp_lookup_hit_l2_tokens_total", SERVE, "0+10x60"),
        series("lmcache_mp_lookup_hit_tokens_total", SERVE, "0+40x60"),
        series("redis_memory_used_bytes", KV, f"{GiB // 2}x60"),
        series("node:kvstack_kv_budget_bytes", {"node": "kv1"}, f"{GiB}x60"),
    ]
    expect = {
        "node:vllm_cache_hit_ratio:rate5m": ({"node": "serve1"}, 0.4),
        "node:lmcache_hit_ratio:rate5m": ({"node": "serve1"}, 0.4),
        "node:lmcache_l1_hit_ratio:rate5m": ({"node": "serve1"}, 0.3),
        "node:lmcache_l2_hit_ratio:rate5m": ({"node": "serve1"}, 0.1),
        "node:kvstack_cache_hit_ratio:rate5m": ({"node": "serve1"}, 0.8),
        "cluster:lmcache_l1_hit_ratio:rate5m": ({}, 0.3),
        "cluster:kvstack_cache_hit_ratio:rate5m": ({}, 0.8),
        "node:kvstack_kv_used_ratio": ({"node": "kv1"}, 0.5),
        "cluster:kvstack_kv_used_ratio": ({}, 0.5),
    }
    test = {
        "interval": "15s",
        "input_series": inputs,
        "promql_expr_test": [
            # rounded: promtool compares values exactly (0.39999999999999997 is not 0.4)
            {
                "expr": f"round({expr}, 0.001)",
                "eval_time": "10m",
                "exp_samples": [{"labels": _labels(lab), "value": v}],
            }
            for expr, (lab, v) in expect.items()
        ],
    }
    out = promtool_test(tmp_path, [test])
    assert out.returncode == 0, out.stdout + out.stderr


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def render(tmp_path: Path, inventory: str, limit: str) -> Path:
    """Render prometheus.yml, kvstack-budget.yml and alertmanager.yml for *inventory*'s monitoring
    host through the roles' render entry points; returns the directory."""
    vault = REPO / inventory / ".vault-pass.example"
    for role in ("prometheus", "alertmanager"):
        out = run_entry_point(
            role,
            {f"{role}_render_dir": str(tmp_path), "cluster_address": "192.0.2.10"},  # no facts gathered
            "render.yml",
            str(REPO / inventory),
            "--limit",
            limit,
            *(["--vault-password-file", str(vault)] if vault.exists() else []),
        )
        assert out.returncode == 0, out.stdout[-3000:]
    return tmp_path


INVENTORIES = {
    "inventory/lab": ("lab-kv1", {"node": 3, "vllm": 2, "lmcache": 2, "router": 1, "kv": 1}, 6379),
    "inventory/lab-cluster": ("lab-kv1", {"node": 6, "vllm": 2, "lmcache": 2, "router": 1, "kv": 3}, 6379),
    "inventory/baremetal.example": (
        "front01",
        {"node": 3, "vllm": 4, "lmcache": 2, "router": 1, "kv": 1},
        6666,
    ),
}


@pytest.mark.parametrize("inventory", sorted(INVENTORIES))
def test_rendered_configs_pass_promtool_and_amtool(tmp_path, inventory):
    limit, jobs, kv_port = INVENTORIES[inventory]
    out_dir = render(tmp_path, inventory, limit)
    checks = [
        [tool("promtool"), "check", "config", str(out_dir / "prometheus.yml")],
        [tool("promtool"), "check", "rules", str(out_dir / "kvstack-budget.yml")],
        [tool("amtool"), "check-config", str(out_dir / "alertmanager.yml")],
    ]
    for cmd in checks:
        res = subprocess.run(cmd, text=True, capture_output=True)
        assert res.returncode == 0, f"{' '.join(cmd[1:])}: {res.stdout}{res.stderr}"
    config = yaml.safe_load((out_dir / "prometheus.yml").read_text())
    targets = {
        j["job_name"]: [(t, sc["labels"]) for sc in j["static_configs"] for t in sc["targets"]]
        for j in config["scrape_configs"]
    }
    assert {j: len(targets.get(j, [])) for j in jobs} == jobs
    assert all(lab.get("node") for ts in targets.values() for _, lab in ts), "every target names its node"
    # each KV exporter names the member it reads as its clients reach it: the server's address, kv_port
    assert [(t.rsplit(":", 1)[0], lab["kv_member"].rsplit(":", 1)[1]) for t, lab in targets["kv"]] == [
        (lab["kv_member"].rsplit(":", 1)[0], str(kv_port)) for _, lab in targets["kv"]
    ]
    budget = yaml.safe_load((out_dir / "kvstack-budget.yml").read_text())
    assert len(budget["groups"][0]["rules"]) == jobs["kv"], "one budget series per kv host"


def test_tier_shares_are_zero_not_nan_while_lmcache_finds_nothing(tmp_path):
    """Traffic served by vLLM's own cache and computing only: LMCache's L1 and L2 shares read 0."""
    inputs = [
        *prompt_tokens("0+40x60", "0x60", "0+20x60"),
        series("lmcache_mp_lookup_hit_l1_tokens_total", SERVE, "0x60"),
        series("lmcache_mp_lookup_hit_l2_tokens_total", SERVE, "0x60"),
        series("lmcache_mp_lookup_hit_tokens_total", SERVE, "0x60"),
    ]
    test = {
        "interval": "15s",
        "input_series": inputs,
        "promql_expr_test": [
            {"expr": f"node:lmcache_{t}_hit_ratio:rate5m", "eval_time": "10m",
             "exp_samples": [{"labels": f'node:lmcache_{t}_hit_ratio:rate5m{{node="serve1"}}', "value": 0}]}
            for t in ("l1", "l2")
        ],
    }  # fmt: skip
    out = promtool_test(tmp_path, [test])
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("role", "bad", "named"),
    [
        ("prometheus", {"prometheus_retention_time": "30 days"}, "prometheus_retention_time must be"),
        ("prometheus", {"prometheus_scrape_timeout_s": 20}, "prometheus_scrape_timeout_s must be"),
        (
            "prometheus",
            {"prometheus_extra_rule_files": ["/x/kvstack-alerts.yml"]},
            "prometheus_extra_rule_files",
        ),
        ("alertmanager", {"alertmanager_route_receiver": "pager"}, "alertmanager_route_receiver must name"),
        (
            "alertmanager",
            {"alertmanager_receivers": [{"webhook_configs": []}]},
            "alertmanager_receivers must be",
        ),
        (
            "lmcache_exporter",
            {"lmcache_exporter_kv_members": ["10.0.0.1"]},
            "lmcache_exporter_kv_members must",
        ),
        ("kv_exporter", {"kv_password": ""}, "kv_exporter_kv_password (kv_password) must be set"),
    ],
)
def test_monitoring_roles_name_a_bad_value(role, bad, named):
    """Each monitoring role's input checks refuse a bad value, naming the variable (the same
    checks run in site.yml's preflight, before anything changes)."""
    good = {"cluster_address": "192.0.2.10", "kv_password": "x", "tier_profile": "dram+kv"}
    out = run_entry_point(
        role, {**good, **bad}, "validate.yml", str(REPO / "inventory" / "lab"), "--limit", "lab-kv1"
    )
    assert out.returncode != 0 and named in out.stdout, out.stdout[-2000:]


def test_monitoring_roles_accept_the_lab_values():
    good = {"cluster_address": "192.0.2.10", "kv_password": "x", "tier_profile": "dram+kv"}
    for role in ("prometheus", "alertmanager", "lmcache_exporter", "kv_exporter"):
        out = run_entry_point(
            role, good, "validate.yml", str(REPO / "inventory" / "lab"), "--limit", "lab-kv1"
        )
        assert out.returncode == 0, f"{role}: {out.stdout[-2000:]}"
