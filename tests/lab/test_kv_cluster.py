"""The KV tier across several servers, on the lab: inventory/lab-cluster puts three kv hosts of
their own (lab-kv2..4) in group kv; site.yml forms them into one Redis Cluster and points both
serving nodes' LMCache at it (valkey client in cluster mode). Then:

- the node checks of group kv pass on every shard (cluster state ok, all slots served, an even
  share each, passwords), and LMCache on each serving node holds connections to every shard;
- a prefix computed on one serving node is a hit on the other, through the sharded tier, and
  the keys it left are spread over all three shards (counts per shard printed);
- a shard stopped under load through the router costs no failed request; the hits it costs are
  printed (README "The KV tier across several servers").

Afterwards the serving nodes go back to inventory/lab's single KV server and lab-kv2..4 stop.
"""

from __future__ import annotations

import json

import pytest

from kvstack import REPO, faults, provision, stack
from kvstack import lab as labmod
from kvstack.workloads import TokenizerAdapter
from kvstack_node import redis_cluster

CLUSTER_INV = REPO / "inventory" / "lab-cluster"
SHARDS = ["lab-kv2", "lab-kv3", "lab-kv4"]


@pytest.fixture(scope="module")
def cluster(up_lab, tmp_path_factory):
    """The lab with the sharded tier (booted, provisioned, serving); the single server after."""
    cfg = labmod.up(CLUSTER_INV)
    try:
        provision.playbook("site.yml", inventory=CLUSTER_INV, limit="kv,serving")
        ep = stack.fetch_endpoints(CLUSTER_INV)
        tok = tmp_path_factory.mktemp("tok") / "tokenizer.json"
        with stack.connection(ep, "lab-serve1") as c:
            c.get(ep.vllm("lab-serve1")["model_path"] + "/tokenizer.json", str(tok))
        yield ep, TokenizerAdapter.from_file(tok)
    finally:
        provision.playbook("site.yml", limit="serving", tags="lmcache,vllm")
        labmod.stop_nodes(cfg, SHARDS)


def _shards(ep) -> list[dict]:
    """Each shard's own report (kvstack_node.redis_cluster status, run from the controller)."""
    lm = ep.lmcache(next(iter(ep.serving)))
    return [
        {**vars(s), "my_slots": s.my_slots}
        for s in (redis_cluster.read(addr, lm["kv_password"]) for addr in lm["kv_nodes"])
    ]


def test_node_checks_pass_on_every_shard(cluster, node_checks):
    proc = node_checks("tests/node/test_kv.py", "-rs", "--ansible-inventory", str(CLUSTER_INV))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "single kv host" not in proc.stdout, proc.stdout[-3000:]  # the cluster checks ran


def test_prefix_from_one_node_is_a_hit_on_the_other_with_keys_on_every_shard(cluster, node_checks):
    ep, _ = cluster
    before = {s["addr"]: s["keys"] for s in _shards(ep)}
    tests = [
        "tests/node/test_serving.py::test_lmcache_holds_kv_server_connections",
        "tests/node/test_serving.py::test_prefix_computed_on_another_node_is_a_hit_here",
    ]
    proc = node_checks(*tests, "--ansible-inventory", str(CLUSTER_INV), "-k", "lab-serve2")
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout[-3000:]
    after = {s["addr"]: s["keys"] for s in _shards(ep)}
    grown = {a: after[a] - before.get(a, 0) for a in after}
    print(json.dumps({"keys_per_shard": after, "new_keys_per_shard": grown}))
    assert len(grown) == 3 and all(n > 0 for n in grown.values()), grown


def test_a_shard_down_under_load_costs_no_request(cluster):
    ep, tok = cluster
    out = faults.shard_down(ep, tok, "lab-kv3")
    print(json.dumps(out, indent=1))
    assert out["router"]["failed"] == 0, out["router"]
    assert out["up"]["failed"] == out["down"]["failed"] == out["back"]["failed"] == 0
    assert out["up"]["hit_fraction"] > 0.8, out["up"]  # every full chunk found, all shards up
    assert 0 < out["down"]["l2_hit_tokens"] < out["up"]["l2_hit_tokens"], out  # the rest still serve
    assert out["back"]["hit_fraction"] > 0.8, out["back"]
    states = {s["addr"]: (s["state"], s["slots_assigned"]) for s in _shards(ep)}
    assert all(st == ("ok", 16384) for st in states.values()), states
