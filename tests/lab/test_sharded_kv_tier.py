"""The KV tier across several servers, on the lab: inventory/lab-cluster puts three kv hosts of
their own (lab-kv2..4) in group kv; site.yml forms them into one Redis Cluster and points both
serving nodes' LMCache at it (the valkey client in cluster mode). Then:

- the node checks of group kv pass on every shard (cluster state ok, all slots served, an even
  share each, passwords), and each serving node's LMCache holds connections to every shard;
- prefixes computed on one serving node are hits on the other, through the sharded tier, and
  the keys they left are spread over all three shards (counts per shard printed);
- a shard stopped under load through the router costs no failed request; the hits it costs are
  printed (README "The KV tier across several servers");
- with --kv-cluster: a fourth kv host (lab-kv5) added to the inventory and site.yml run again
  grows the tier: every key kept (those of the slots the new member took moved with them),
  nothing on the serving nodes restarted, new prefixes land on the new member too.

The module runs last of all lab tests (marker ``final``). Afterwards the shards are emptied and
reset (they are the test's own); when the session keeps the lab up (it was up before, or
--keep-lab) the serving nodes go back to inventory/lab's single KV server and lab-kv2..5 stop,
otherwise the session's lab-down stops every node.
"""

from __future__ import annotations

import json

import pytest

from kvstack import REPO, faults, inventory, provision, stack
from kvstack import lab as labmod
from kvstack.workloads import TokenizerAdapter
from kvstack_node import redis_cluster
from kvstack_node.resp import RespClient, RespError

pytestmark = pytest.mark.final

CLUSTER_INV = REPO / "inventory" / "lab-cluster"
GROWN_INV = REPO / "tests" / "lab" / "inventory" / "lab-cluster-grown"
SHARDS = ["lab-kv2", "lab-kv3", "lab-kv4", "lab-kv5"]


@pytest.fixture(scope="module")
def cluster(up_lab, tmp_path_factory, lab_goes_down):
    """The lab with the sharded tier (booted, provisioned, serving); afterwards as described above."""
    cfg = labmod.up(CLUSTER_INV)
    ep = None
    try:
        provision.playbook("site.yml", inventory=CLUSTER_INV, limit="kv,serving")
        ep = stack.fetch_endpoints(CLUSTER_INV)
        tok = tmp_path_factory.mktemp("tok") / "tokenizer.json"
        with stack.connection(ep, "lab-serve1") as c:
            c.get(ep.vllm("lab-serve1")["model_path"] + "/tokenizer.json", str(tok))
        yield ep, TokenizerAdapter.from_file(tok)
    finally:
        _reset(cfg)
        if not lab_goes_down:
            provision.playbook("site.yml", limit="serving", tags="lmcache,vllm")
            labmod.stop_nodes(cfg, SHARDS)
        elif ep is not None:
            _no_start_at_next_boot(ep)


def _no_start_at_next_boot(ep) -> None:
    """The serving nodes stay configured for the shards when the session takes the lab down. At
    the next boot their LMCache would wait for shards that are not up, vLLM's start for LMCache,
    and the next site.yml's restart of LMCache queues behind vLLM's start job for minutes: so
    their units do not start at boot; site.yml enables and starts them with the lab's own tier."""
    for node, serving in ep.serving.items():
        units = ["lmcache.service", *(f"vllm@{v['instance']}.service" for v in serving["vllm"])]
        stack.run_on(ep, node, "systemctl disable " + " ".join(units), warn=True)


def _reset(cfg) -> None:
    """Empty the test's shards and make each forget the cluster (the next run forms it anew)."""
    kv = inventory.load(CLUSTER_INV).group_vars("kv")
    addresses = labmod.load_config(GROWN_INV).nodes
    for name in SHARDS:
        if not labmod.node_pid(cfg, name):
            continue
        try:
            with RespClient(addresses[name], int(kv["kv_port"]), kv["kv_password"], timeout=10) as c:
                c.command("FLUSHALL")
                c.command("CLUSTER", "RESET", "HARD")
        except (OSError, RespError) as e:
            print(f"{name}: not reset: {e}")


def _shards(ep) -> list[dict]:
    """Each shard's own report (kvstack_node.redis_cluster's reader, from the controller)."""
    lm = ep.lmcache(next(iter(ep.serving)))
    return [
        {**vars(s), "my_slots": s.my_slots}
        for s in (redis_cluster.read(addr, lm["kv_password"]) for addr in lm["kv_nodes"])
    ]


def test_node_checks_pass_on_every_shard_and_lmcache_reaches_each(cluster, node_checks):
    proc = node_checks("tests/node/test_kv.py", "-rs", "--ansible-inventory", str(CLUSTER_INV))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "single kv host" not in proc.stdout, proc.stdout[-3000:]  # the cluster checks ran
    test = "tests/node/test_serving.py::test_lmcache_holds_kv_server_connections"
    proc = node_checks(test, "--ansible-inventory", str(CLUSTER_INV))
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout[-3000:]


def test_prefixes_from_one_node_are_hits_on_the_other_with_keys_on_every_shard(cluster):
    ep, tok = cluster
    before = {s["addr"]: s["keys"] for s in _shards(ep)}
    out = faults.cross_node_hits(ep, tok, seed=11)
    after = {s["addr"]: s["keys"] for s in _shards(ep)}
    grown = {a: after[a] - before.get(a, 0) for a in after}
    print(json.dumps({**out, "new_keys_per_shard": grown}))
    assert out["failed"] == 0 and out["hit_fraction"] > 0.9, out
    assert len(grown) == 3 and all(n > 0 for n in grown.values()), grown


def test_a_shard_down_under_load_costs_no_request(cluster):
    ep, tok = cluster
    out = faults.shard_down(ep, tok, "lab-kv3")
    print(json.dumps(out, indent=1))
    assert out["router"]["failed"] == 0, out["router"]
    assert out["up"]["failed"] == out["down"]["failed"] == out["back"]["failed"] == 0
    assert out["up"]["hit_fraction"] > 0.9, out["up"]  # every full chunk found, all shards up
    assert 0 < out["down"]["l2_hit_tokens"] < out["up"]["l2_hit_tokens"], out  # the rest still serve
    assert out["back"]["hit_fraction"] > 0.9, out["back"]
    states = {s["addr"]: (s["state"], s["slots_assigned"]) for s in _shards(ep)}
    assert all(st == ("ok", 16384) for st in states.values()), states


def test_growing_by_a_kv_host_keeps_every_key_and_restarts_nothing(cluster, request):
    if not request.config.getoption("--kv-cluster"):
        pytest.skip("growing the sharded tier runs with --kv-cluster (+6 min)")
    ep, tok = cluster
    before = {s["addr"]: s["keys"] for s in _shards(ep)}
    show = "systemctl show -p InvocationID --value lmcache vllm@main"
    units = {n: stack.run_on(ep, n, show).stdout.split() for n in ep.serving}
    labmod.up(GROWN_INV)
    provision.playbook("site.yml", inventory=GROWN_INV, limit="kv,serving")
    grown = stack.fetch_endpoints(GROWN_INV)
    shards = _shards(grown)
    print(
        json.dumps({"keys_before": before, "after": {s["addr"]: (s["keys"], s["my_slots"]) for s in shards}})
    )
    assert len(shards) == 4 and all(s["state"] == "ok" and s["slots_assigned"] == 16384 for s in shards)
    assert all(abs(s["my_slots"] - 4096) <= 0.05 * 16384 for s in shards), shards
    assert sum(s["keys"] for s in shards) >= sum(before.values()) > 0, "keys lost while growing"
    assert {n: stack.run_on(ep, n, show).stdout.split() for n in ep.serving} == units  # no restart
    out = faults.cross_node_hits(grown, tok, seed=505)
    assert out["failed"] == 0 and out["hit_fraction"] > 0.9, out
    new = next(s for s in _shards(grown) if s["addr"] not in before)
    assert new["keys"] > next(s["keys"] for s in shards if s["addr"] == new["addr"]), new
