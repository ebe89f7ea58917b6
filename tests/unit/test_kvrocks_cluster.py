"""kvstack_node.kvrocks_cluster's decisions, on CLUSTER NODES text in the format Kvrocks 2.10
prints it (src/cluster/cluster.cc, GenNodesDescription: ``<id> <ip>:<port>@<port+10000>
[myself,]master - <ping> <pong> <version> connected <slot spans>``). No Kvrocks binary is at hand:
what the members answer is built from the topology each would hold."""

from __future__ import annotations

from kvstack_node import kv_cluster as kc
from kvstack_node import kvrocks_cluster as krc
from kvstack_node.kv_cluster import SLOTS, Node

NODES = [Node(f"kv{i}", f"10.0.0.2{i}", 6666) for i in range(1, 5)]


def nodes_text(nodes: list[Node], slots: dict[str, set[int]], version: int, me: str) -> str:
    """What Kvrocks' CLUSTER NODES prints for this topology on member *me*."""
    lines = []
    for n in nodes:
        flags = ("myself," if n.name == me else "") + "master -"
        spans = " ".join(f"{a}-{b}" if a != b else str(a) for a, b in kc.ranges(slots.get(n.name, ())))
        line = (
            f"{kc.node_id(n.name)} {n.ip}:{n.port}@{n.port + 10000} {flags} 1 2 {version} connected {spans}"
        )
        lines.append(line.rstrip())
    return "\n".join(lines) + "\n"


def views(nodes, slots, version):
    return {n.name: (version, nodes_text(nodes, slots, version, n.name)) for n in nodes}


def test_first_run_pushes_version_0_with_even_shares():
    fresh = {n.name: (-1, None) for n in NODES[:3]}
    changed, version, target, current = krc.decide(fresh, NODES[:3])
    assert changed and version == 0 and current == {}
    assert sorted(len(s) for s in target.values()) == [5461, 5461, 5462]
    assert set().union(*target.values()) == set(range(SLOTS))


def test_a_run_with_nothing_new_changes_nothing():
    _, _, target, _ = krc.decide({n.name: (-1, None) for n in NODES[:3]}, NODES[:3])
    changed, version, again, _ = krc.decide(views(NODES[:3], target, 0), NODES[:3])
    assert not changed and version == 0 and again == target


def test_growing_moves_only_the_new_members_share_and_bumps_the_version():
    _, _, three, _ = krc.decide({n.name: (-1, None) for n in NODES[:3]}, NODES[:3])
    v = {**views(NODES[:3], three, 7), "kv4": (-1, None)}
    changed, version, four, current = krc.decide(v, NODES)
    assert changed and version == 8 and current == three
    moved = kc.moves(current, four)
    assert len(moved) == SLOTS // 4 and {dst for _, dst in moved.values()} == {"kv4"}
    assert krc.parse_slots(nodes_text(NODES, four, 8, "kv1")) == {kc.node_id(n): s for n, s in four.items()}


def test_a_member_behind_or_a_member_gone_is_fixed():
    _, _, three, _ = krc.decide({n.name: (-1, None) for n in NODES[:3]}, NODES[:3])
    lagging = {**views(NODES[:3], three, 3), "kv3": (2, nodes_text(NODES[:3], three, 2, "kv3"))}
    changed, version, target, _ = krc.decide(lagging, NODES[:3])
    assert changed and version == 4 and target == three  # same slots, pushed again at a new version
    two = views(NODES[:3], three, 4)
    del two["kv3"]
    changed, version, target, current = krc.decide(two, NODES[:2])
    assert changed and version == 5 and set(target) == {"kv1", "kv2"}
    assert current[kc.node_id("kv3")] == three["kv3"]  # a member the inventory no longer lists: by id
    assert set().union(*target.values()) == set(range(SLOTS))
