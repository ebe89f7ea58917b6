"""Fault drills on the lab (kvstack.faults), on the inventory's tier profile (dram+kv).

- KV server stopped under load: clients see no failed request (LMCache serves from node DRAM
  and recomputes the rest) while its stores to the KV server fail; once it is back, LMCache's
  valkey client reconnects by itself (nothing restarts) and the KV tier's stores and hits
  come back.
- LMCache killed under load: systemd restarts it (and vLLM with it); requests in the window
  fail, every request after it succeeds.
- KV server restarted, then SIGKILLed, under load through the router: no failed request and
  no unit on any serving node goes down; afterwards a prefix computed on one node is a hit on
  the other (through the KV tier).
The figures (failed requests, seconds) are printed and listed in the README."""

from __future__ import annotations

import json

import pytest

from kvstack import faults, stack
from kvstack.workloads import TokenizerAdapter

NODE = "lab-serve1"


@pytest.fixture(scope="module")
def drill(up_lab, tmp_path_factory):
    ep = stack.fetch_endpoints(None)
    tok = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    with stack.connection(ep, NODE) as c:
        c.get(ep.vllm(NODE)["model_path"] + "/tokenizer.json", str(tok))
    d = faults.Drill(ep, NODE, TokenizerAdapter.from_file(tok))
    previous = d.invocation()
    d.ssh(NODE, "systemctl restart lmcache")  # a known start: LMCache connected to the KV server
    d.wait_serving(previous)
    return d


def test_kv_server_outage(drill):
    out = faults.kv_outage(drill, drill.ep.kv[0])
    print(json.dumps(out, indent=1))
    before, down, recovered = out["phases"]
    for ph in (before, down, recovered):
        assert ph["failed"] == 0, ph  # clients never see the outage
    assert before["counters"]["l2_chunks_stored"] == before["counters"]["l2_chunks_submitted"] > 0
    assert down["counters"]["l2_chunks_stored"] == 0 < down["counters"]["l2_chunks_submitted"]
    assert down["lmcache_tokens"] > 0  # node DRAM still serves while the KV server is gone
    # stores queued while it was down may still complete once it is back: >=
    assert recovered["counters"]["l2_chunks_stored"] >= recovered["counters"]["l2_chunks_submitted"] > 0
    assert recovered["lmcache_tokens"] > 0
    assert out["lmcache_ran_on"], out  # reconnected without a restart
    assert out["reconnected_s"] < 30, out


def test_lmcache_killed(drill):
    out = faults.lmcache_kill(drill)
    print(json.dumps(out, indent=1))
    killed, after = out["phases"]
    assert killed["requests"] > 0  # load was running when LMCache died
    assert out["lmcache_restarts"] >= 1 and out["serving_again_s"] < 300
    assert after["failed"] == 0 and after["requests"] == 16
    assert after["counters"]["l2_chunks_stored"] > 0  # the restarted LMCache reaches the KV server


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "sigkill"])
def test_kv_server_restart_costs_no_request_through_the_router(drill, node_checks, kill):
    """Through the router, across a KV-server restart (then a SIGKILL, which systemd follows with a
    start): no failed request and no LMCache or vLLM unit down on any serving node (the valkey
    client reconnects; the resp client's watchdog restarted every node); afterwards every node's
    LMCache holds all its connections to the KV server again, and (after the SIGKILL) a prefix
    computed on one node is a hit on the other, through the KV tier only."""
    out = faults.kv_restart(drill.ep, drill.tok, drill.ep.kv[0], kill=kill)
    print(json.dumps(out, indent=1))
    assert out["clients"]["failed"] == 0, out
    assert out["load_outlasted_recovery"], out
    assert out["clients"]["requests"] >= 20, out
    assert out["units"]["samples"] > 0, out
    assert out["units"]["nodes_down_at_once"] == 0, out  # nothing restarted
    if kill:  # once (about a minute): the KV tier serves across nodes again
        test = "tests/node/test_serving.py::test_prefix_computed_on_another_node_is_a_hit_here"
        proc = node_checks(test, "-k", "lab-serve2")
        assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:]
