"""The sharded KV tier's topology (kvstack_node.kv_cluster): even slot shares, the fewest moves
when masters come and go, and Kvrocks' CLUSTERX SETNODES text."""

from __future__ import annotations

import pytest

from kvstack_node import kv_cluster as kc
from kvstack_node.kv_cluster import SLOTS, Node


def _check_cover(plan: dict[str, set[int]]) -> None:
    seen = [s for slots in plan.values() for s in slots]
    assert sorted(seen) == list(range(SLOTS))  # every slot once


def test_a_fresh_cluster_gets_even_contiguous_shares():
    plan = kc.plan_slots({}, ["kv1", "kv2", "kv3"])
    _check_cover(plan)
    assert [kc.ranges(plan[m]) for m in ("kv1", "kv2", "kv3")] == [
        [(0, 5461)],
        [(5462, 10922)],
        [(10923, 16383)],
    ]
    assert kc.plan_slots(plan, ["kv1", "kv2", "kv3"]) == plan  # applied again: nothing moves


def test_growing_moves_only_what_the_new_master_takes():
    three = kc.plan_slots({}, ["kv1", "kv2", "kv3"])
    four = kc.plan_slots(three, ["kv1", "kv2", "kv3", "kv4"])
    _check_cover(four)
    moved = kc.moves(three, four)
    assert len(moved) == SLOTS // 4 and {to for _, to in moved.values()} == {"kv4"}
    for m in ("kv1", "kv2", "kv3"):  # what stays keeps serving where it was
        assert four[m] <= three[m] and len(four[m]) == 4096


def test_a_master_leaving_hands_its_slots_to_the_others():
    four = kc.plan_slots({}, ["kv1", "kv2", "kv3", "kv4"])
    three = kc.plan_slots(four, ["kv1", "kv2", "kv4"])
    _check_cover(three)
    moved = kc.moves(four, three)
    assert {frm for frm, _ in moved.values()} == {"kv3"} and len(moved) == 4096


def test_bad_topologies_are_refused():
    with pytest.raises(ValueError, match="at least one master"):
        kc.plan_slots({}, [])
    with pytest.raises(ValueError, match="listed twice"):
        kc.plan_slots({}, ["kv1", "kv1"])
    with pytest.raises(ValueError, match="served by both"):
        kc.plan_slots({"a": [1], "b": [1]}, ["a", "b"])
    with pytest.raises(ValueError, match="not in 0-16383"):
        kc.plan_slots({"a": [SLOTS]}, ["a"])


def test_setnodes_text_as_kvrocks_parses_it():
    """One line per node: a 40-character id, ip, port, master/slave, the master's id or '-', then
    (masters only) slot ranges."""
    nodes = [
        Node("kv1", "10.77.0.21", 6666),
        Node("kv2", "10.77.0.22", 6666),
        Node("kv3", "10.77.0.23", 6666, "kv1"),
    ]
    slots = {"kv1": set(range(8191)) | {9000}, "kv2": set(range(8191, SLOTS)) - {9000}}
    text = kc.setnodes(nodes, slots)
    lines = [line.split() for line in text.splitlines()]
    assert lines[0] == [kc.node_id("kv1"), "10.77.0.21", "6666", "master", "-", "0-8190", "9000"]
    assert lines[1][3:] == ["master", "-", "8191-8999", "9001-16383"]
    assert lines[2] == [kc.node_id("kv3"), "10.77.0.23", "6666", "slave", kc.node_id("kv1")]
    assert all(len(x[0]) == 40 for x in lines) and kc.node_id("kv1") == kc.node_id("kv1")
    with pytest.raises(ValueError, match="slot 9000"):  # Kvrocks refuses overlapping slots
        kc.setnodes(nodes, {**slots, "kv2": slots["kv2"] | {9000}})
    with pytest.raises(ValueError, match="not a master"):
        kc.setnodes([Node("a", "1.1.1.1", 1), Node("b", "1.1.1.2", 1, "c")], {})


def test_key_slot_matches_redis():
    """Values from Redis' CLUSTER KEYSLOT (redis-server 7.0 in cluster mode), hash tags included."""
    assert kc.key_slot("foo") == 12182
    assert kc.key_slot("bar") == 5061
    assert (
        kc.key_slot("{user1000}.following") == kc.key_slot("{user1000}.followers") == kc.key_slot("user1000")
    )
    assert kc.key_slot("foo{}{bar}") == kc.key_slot(b"foo{}{bar}")  # empty tag: whole key
    assert kc.key_slot("foo{}{bar}") != kc.key_slot("bar")
