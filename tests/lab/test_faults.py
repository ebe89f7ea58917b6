"""Fault drills on the lab (kvstack.faults), on the inventory's tier profile (dram+kv).

- KV server stopped under load: clients see no failed request (LMCache serves from node DRAM
  and recomputes the rest) while its stores to the KV server fail; once it is back, the lmcache
  role's watchdog restarts LMCache (LMCache 0.5.6's resp client does not reconnect), which
  brings the KV tier's stores and hits back without anyone stepping in.
- LMCache killed under load: systemd restarts it (and vLLM with it); requests in the window
  fail, every request after it succeeds.
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
    d.ssh(NODE, "systemctl restart lmcache")  # a known start: LMCache connected to the KV server
    d.wait_serving()
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
    assert recovered["counters"]["l2_chunks_stored"] == recovered["counters"]["l2_chunks_submitted"] > 0
    assert recovered["lmcache_tokens"] > 0
    assert out["watchdog_restart_s"] < 120  # interval 30 s (+ grace 60 s after LMCache's start)


def test_lmcache_killed(drill):
    out = faults.lmcache_kill(drill)
    print(json.dumps(out, indent=1))
    killed, after = out["phases"]
    assert killed["requests"] > 0  # load was running when LMCache died
    assert out["lmcache_restarts"] >= 1 and out["serving_again_s"] < 300
    assert after["failed"] == 0 and after["requests"] == 16
    assert after["counters"]["l2_chunks_stored"] > 0  # the restarted LMCache reaches the KV server
