"""Push the sharded KV tier's topology to Kvrocks in cluster mode (roles/kvrocks, when group kv
has several hosts). Kvrocks' members do not talk to each other: each is told the whole topology
(``CLUSTERX SETNODES <text> <version>``, which it takes only with a version above its own) and
its own id (``CLUSTERX SETNODEID``). Run on one kv host, the password in ``KV_PASSWORD``::

    KV_PASSWORD=... python3 -m kvstack_node.kvrocks_cluster apply kv1=10.0.0.21:6666 kv2=10.0.0.22:6666 ...

Ids come from the inventory names (:func:`kvstack_node.kv_cluster.node_id`), slots from
:func:`kvstack_node.kv_cluster.plan_slots` starting from the topology the members hold: a first
run gives each member an even share; adding a member moves about 1/N of the slots, all to it;
a run with nothing new changes nothing (no version bump). Kvrocks serves a slot's keys only
where the topology puts the slot: a moved slot's keys stay on the old member, unreachable, until
their TTL (LMCache writes every key with one) or a compaction drops them; their prefixes are
computed once more. (``CLUSTERX MIGRATE`` would carry them over; this tool does not run it:
no Kvrocks binary was at hand to test it against.)

Prints one JSON object (``changed``, ``version``, ``moved_slots``, ``slots`` per member) and exits
0 once every member reports the new version; 2 when a member does not answer or refuses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence

from kvstack_node.kv_cluster import Node, cluster_nodes, moves, node_id, plan_slots, setnodes, split_addr
from kvstack_node.resp import RespClient, RespError


class Refused(RuntimeError):
    """A member does not answer or refuses a cluster command."""


def parse_slots(text: str) -> dict[str, set[int]]:
    """``CLUSTER NODES`` text (Kvrocks' and Redis' format) -> node id -> the slots it serves."""
    return {n.id: {s for a, b in n.ranges for s in range(a, b + 1)} for n in cluster_nodes(text)}


def decide(
    views: Mapping[str, tuple[int, str | None]], members: Sequence[Node]
) -> tuple[bool, int, dict[str, set[int]], dict[str, set[int]]]:
    """From each member's (topology version, CLUSTER NODES text or None) and the members the
    inventory lists: whether to push, the version to push, the target slots and the current ones
    (by member name; slots of ids the inventory no longer lists count as leaving)."""
    names = {node_id(n.name): n.name for n in members}
    newest = max((v for v, _ in views.values()), default=-1)
    text = next((t for v, t in views.values() if v == newest and t), "")
    held = parse_slots(text)
    current = {names.get(i, i): s for i, s in held.items()}
    masters = [n.name for n in members if n.master is None]
    target = plan_slots(current, masters)
    same = (
        newest >= 0
        and all(v == newest for v, _ in views.values())
        and set(held) == set(names)
        and all(current.get(m, set()) == target[m] for m in masters)
    )
    return not same, newest if same else newest + 1, target, current


def _read(c: RespClient) -> tuple[int, str | None]:
    version = int(c.command("CLUSTERX", "VERSION"))
    return version, (c.command("CLUSTER", "NODES").decode() if version >= 0 else None)


def apply(members: Sequence[tuple[str, str]], password: str) -> dict[str, object]:
    """Set each member's id, then push the planned topology to all of them when it changed."""
    nodes, clients = [], {}
    try:
        for name, addr in members:
            try:
                host, port = split_addr(addr)
                nodes.append(Node(name, host, port))
                clients[name] = RespClient(host, port, password, timeout=30)
                clients[name].command("CLUSTERX", "SETNODEID", node_id(name))
            except (ValueError, OSError, RespError) as e:
                raise Refused(
                    f"the Kvrocks server {name} ({addr}) does not take its cluster id: {e}"
                ) from None
        views = {name: _read(c) for name, c in clients.items()}
        changed, version, target, current = decide(views, nodes)
        if changed:
            text = setnodes(nodes, target)
            for name, c in clients.items():
                try:
                    c.command("CLUSTERX", "SETNODES", text, str(version))
                except RespError as e:
                    raise Refused(f"{name} refused the topology (version {version}): {e}") from None
        versions = {name: _read(c)[0] for name, c in clients.items()}
    finally:
        for c in clients.values():
            c.close()
    if any(v != version for v in versions.values()):
        raise Refused(f"members at other topology versions than {version}: {versions}")
    return {
        "changed": changed,
        "version": version,
        "moved_slots": len(moves(current, target)) if current else 0,
        "slots": {n: len(s) for n, s in target.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m kvstack_node.kvrocks_cluster apply NAME=HOST:PORT...``: see the docstring."""
    p = argparse.ArgumentParser(prog="kvstack_node.kvrocks_cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["apply"])
    p.add_argument("members", nargs="+", metavar="NAME=HOST:PORT")
    a = p.parse_args(argv)
    members = [tuple(m.split("=", 1)) for m in a.members]
    if any(len(m) != 2 for m in members):
        p.error("each member is NAME=HOST:PORT")
    try:
        out = apply(members, os.environ.get("KV_PASSWORD", ""))
    except Refused as e:
        print(json.dumps({"changed": False, "refused": str(e)}))
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
