"""NVIDIA Dynamo on the lab: `site.yml` with `dynamo_enabled=true` deploys etcd, NATS, the frontend
with its KV router and a Dynamo vLLM worker (CPU build, LMCache attached) on each serving node; a
second run changes nothing; the node checks (Dynamo's, and the firewall's listening-port check)
pass; `run-bench --dynamo` measures Dynamo vs Dynamo + LMCache on one and two workers; and
Dynamo goes back off as the inventory has it. Asserts on counters and outcomes, never timings."""

from __future__ import annotations

import json
import re

import pytest

from kvstack import bench, dynamo_bench, provision

ON = {"dynamo_enabled": True}
TAGS = "dynamo,firewall"


@pytest.fixture(scope="module")
def dynamo_on(up_lab):
    """Dynamo on (two runs of site.yml: the second's recap); off again afterwards, whatever happened."""
    first = provision.playbook(tags=TAGS, extra_vars=ON, capture=True, echo=False, check_rc=False)
    assert first.returncode == 0, first.stdout[-4000:]
    second = provision.playbook(tags=TAGS, extra_vars=ON, capture=True, echo=False, check_rc=False)
    yield second
    provision.playbook(tags=TAGS, capture=True, echo=False, check_rc=False)


def test_second_run_changes_nothing(dynamo_on):
    assert dynamo_on.returncode == 0, dynamo_on.stdout[-4000:]
    recap = provision.recap(dynamo_on.stdout)
    assert set(recap) == {"lab-serve1", "lab-serve2", "lab-kv1"}
    assert {h: r["changed"] for h, r in recap.items()} == dict.fromkeys(recap, 0), recap


def test_dynamo_node_checks_pass(dynamo_on, node_checks):
    """etcd, NATS (password refused, clients connected), the frontend (model listed, a completion
    through the KV router), the workers (ready, Dynamo's own parser on the installed units)."""
    proc = node_checks("tests/node/test_dynamo.py", "--set=dynamo_enabled=true", "-rs")
    assert proc.returncode == 0, proc.stdout[-4000:]
    # every Dynamo check ran somewhere: 9 per-group checks plus systemd-analyze on 3 nodes
    assert re.search(r"\b16 passed", proc.stdout), proc.stdout[-2000:]


def test_firewall_names_every_port_dynamo_listens_on(dynamo_on, node_checks):
    proc = node_checks("tests/node/test_common.py", "--set=dynamo_enabled=true")
    assert proc.returncode == 0, proc.stdout[-4000:]


@pytest.fixture(scope="module")
def dynamo_run(dynamo_on, tmp_path_factory):
    opts = bench.BenchOptions(
        dynamo=True,
        matrix=False,
        probe=False,
        datapath=False,
        rocksdb=False,
        routing=False,
        results_dir=tmp_path_factory.mktemp("results"),
    )
    out = bench.run_bench(opts)
    return out, json.loads((out / "results.json").read_text())


def test_every_configuration_served_every_request(dynamo_run):
    _, res = dynamo_run
    runs = {r["config"]: r for r in res["dynamo"]["runs"]}
    assert list(runs) == list(dynamo_bench.CONFIGS), res["missing"]
    for label, r in runs.items():
        s = r["summary"]
        assert s["failed"] == 0 and s["completed"] == s["requests"] > 0, label
        # the workers' own counters account for every request the client sent
        assert sum(w["requests"] for w in r["per_worker"].values()) == s["requests"], label
        assert list(r["per_worker"]) == r["worker_hosts"]
        assert len(r["worker_hosts"]) == r["workers"]


def test_lmcache_attached_or_not_per_configuration(dynamo_run):
    """With LMCache attached the one worker takes prompt tokens from it (the working set is 1.5x
    its own KV space); without, none: the connector is not there."""
    _, res = dynamo_run
    runs = {r["config"]: r for r in res["dynamo"]["runs"]}
    assert runs["dynamo+lmcache 1 worker"]["per_worker"]["lab-serve1"]["lmcache_hit_rate"] > 0
    assert runs["dynamo+lmcache 1 worker"]["lmcache_hit_tokens"] > 0
    for label in ("dynamo 1 worker", "dynamo 2 workers"):
        for w in runs[label]["per_worker"].values():
            assert not w["lmcache_hit_rate"], label


def test_report_labels_the_dynamo_runs(dynamo_run):
    out, res = dynamo_run
    md = (out / "report.md").read_text()
    assert "## NVIDIA Dynamo" in md and "router mode\n`kv`" in md
    for label in dynamo_bench.CONFIGS:
        assert f"| {label} | lab-serve1 |" in md
    assert (out / "dynamo.png").is_file()
    assert all(v is not None for v in res["dynamo"]["comparisons"].values())


def test_dynamo_back_off_as_the_inventory_has_it(dynamo_run, testinfra_backend):
    for node in ("lab-serve1", "lab-serve2"):
        svc = testinfra_backend(node).service("dynamo-worker")
        assert not svc.is_running and not svc.is_enabled, node
    kv1 = testinfra_backend("lab-kv1")
    for unit in ("dynamo-frontend", "nats-server", "etcd"):
        assert not kv1.service(unit).is_running and not kv1.service(unit).is_enabled, unit
    rules = kv1.check_output("nft list table inet kvstack")
    assert "4222" not in rules and "8300" not in rules
