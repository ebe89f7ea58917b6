"""The KV tier stays within its budget (kvstack.capacity): the KV server in Kvrocks' mode of
operation (redis with ``noeviction``: writes refused at the hard limit, as Kvrocks does) with a
small budget, more than three times the budget written through the router by both serving nodes
with an LMCache restart between the two halves. The server's used bytes never pass the budget,
no request fails, greedy outputs re-sent to both nodes equal the cold ones, and the latest
prefixes are still hits from the KV tier.

Only the KV node is re-provisioned with the small budget (``--limit``, tags ``redis_server,
kv_janitor``): the serving nodes keep the inventory's 2.2 GiB budget, so their LMCache accounting
(0.55 GiB each) allows more than the KV node's 0.25 GiB, the case the janitor exists for (keys
no LMCache counts). The derived LMCache limits are checked with LMCache's own parser in
tests/gpu/test_software.py. Afterwards the KV node is provisioned back."""

from __future__ import annotations

import json

import pytest

from kvstack import capacity, faults, provision, stack
from kvstack.workloads import TokenizerAdapter

BUDGET_GB = 0.25
BUDGET_BYTES = int(BUDGET_GB * 2**30)
SMALL = {
    "kv_capacity_gb": BUDGET_GB,
    "redis_server_maxmemory_policy": "noeviction",
    "kv_janitor_interval_s": 5,
}


def provision_kv(ep: stack.Endpoints, kv_node: str, extra: dict) -> dict:
    out = provision.playbook(
        "site.yml", limit=kv_node, tags="redis_server,kv_janitor", extra_vars=extra, capture=True
    ).stdout
    for node in ep.serving:  # redis restarted: every LMCache reconnects by itself
        faults.wait_kv_clients(ep, node, timeout_s=120)
    return provision.recap(out)[kv_node]


@pytest.fixture(scope="module")
def small_budget(up_lab, tmp_path_factory):
    ep = stack.fetch_endpoints(None)
    kv_node = ep.kv[0]
    lm = ep.lmcache(next(iter(ep.serving)))
    with capacity.kv_connect(lm) as c:
        c.command("FLUSHALL")  # the lab's cache from earlier tests: the budget starts empty
    tok = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    node = next(iter(ep.serving))
    with stack.connection(ep, node) as conn:
        conn.get(ep.vllm(node)["model_path"] + "/tokenizer.json", str(tok))
    try:
        rec = provision_kv(ep, kv_node, SMALL)
        assert rec["failed"] == 0 and rec["changed"] >= 1, rec
        yield ep, kv_node, TokenizerAdapter.from_file(tok)
    finally:
        provision_kv(ep, kv_node, {})  # allkeys-lru again: the janitor is off (the node tier checks it)


JANITOR_CHECK = "tests/node/test_kv.py::test_janitor_runs_where_the_server_refuses_writes_at_its_limit"


def test_kv_tier_stays_within_its_budget_through_the_router(small_budget, node_checks):
    ep, kv_node, tok = small_budget
    proc = node_checks(JANITOR_CHECK)  # noeviction now: the janitor's timer runs
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:]
    out = capacity.run(ep, tok, kv_node)
    print(json.dumps(out, indent=1))
    assert out["hard_limit_bytes"] == int(BUDGET_GB * 0.9 * 1024) * 2**20  # maxmemory from the budget
    assert out["requests"] == 112 and out["failed"] == 0, out
    assert out["received_bytes"] >= 3 * BUDGET_BYTES, out  # written: at least 3x the budget
    assert out["samples"] >= 100 and 0 < out["peak_used_bytes"] <= BUDGET_BYTES, out
    assert out["janitor_deleted_keys"] > 0, out  # the backstop did the work
    resend = out["resend"]
    assert resend["failed"] == 0 and resend["differ"] == 0, resend  # greedy outputs as cold
    assert sum(resend["l2_hit_tokens"].values()) > 0, resend  # recent prefixes hit the KV tier
