"""Form or grow the Redis Cluster of group ``kv`` (roles/redis_server, when group kv has several
hosts). Run on one kv host, with the password in ``KV_PASSWORD``::

    KV_PASSWORD=... python3 -m kvstack_node.redis_cluster ensure 10.0.0.21:6379 10.0.0.22:6379 ...
    KV_PASSWORD=... python3 -m kvstack_node.redis_cluster status 10.0.0.21:6379 ...   # reads only
    KV_PASSWORD=... python3 -m kvstack_node.redis_cluster plan 10.0.0.21:6379 ...     # reads only

It reads every listed server first and changes nothing unless all of them answer and are in
cluster mode. Then, with Redis' own tool (``redis-cli --cluster``, which moves keys with their
slots):

- no server belongs to a cluster yet: ``create`` (masters only), once every server is empty (a
  server holding keys it wrote standalone is refused, naming it: Redis Cluster forms only from
  empty servers, and nothing here deletes a cache's data on its own);
- a cluster exists and some listed servers are not in it: ``add-node`` each (empty) one, then
  ``rebalance --cluster-use-empty-masters``: the new masters take an even share of the slots,
  the keys of those slots move with them (MIGRATE), every other key stays where it is;
- members of the cluster that are not listed are reported and left alone (taking a server out
  needs its slots drained first: ``redis-cli --cluster rebalance --cluster-weight ID=0``).

``ensure`` prints one JSON object (``changed``, ``created``, ``added``, ``unlisted``,
``slots_assigned``, ``state``) and exits 0 once every listed server reports ``cluster_state:ok``
with all 16,384 slots assigned; 2 on a refusal (nothing changed), 1 when the cluster does not
settle. ``status`` prints what each server reports (node checks, the bench's per-shard view);
``plan`` what ``ensure`` would do (check mode), changing nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

from kvstack_node.kv_cluster import SLOTS, cluster_nodes, split_addr
from kvstack_node.kv_janitor import info, parse_info
from kvstack_node.resp import RespClient, RespError

REDIS_CLI = "redis-cli"


class Refused(RuntimeError):
    """The servers are not in a state this tool may change; nothing was changed."""


@dataclasses.dataclass
class Server:
    """What one listed server reports about itself and the cluster it sees."""

    addr: str  # host:port, as listed
    cluster_enabled: bool
    keys: int
    known_nodes: int
    slots_assigned: int
    state: str
    members: dict[str, str]  # host:port -> node id, from CLUSTER NODES (itself included)
    my_ranges: list[tuple[int, int]]  # the slots this server serves, inclusive ranges

    @property
    def my_slots(self) -> int:
        """How many slots this server serves."""
        return sum(b - a + 1 for a, b in self.my_ranges)


def parse_nodes(text: str, self_addr: str) -> tuple[dict[str, str], list[tuple[int, int]]]:
    """``CLUSTER NODES`` text -> (host:port -> id of every member, slot ranges of the ``myself``
    line). A server that has met no other one lists itself without a host: *self_addr* stands in."""
    lines = cluster_nodes(text)
    members = {self_addr if n.myself and n.addr.startswith(":") else n.addr: n.id for n in lines}
    return members, [r for n in lines if n.myself for r in n.ranges]


def read(addr: str, password: str) -> Server:
    """Ask the server at *addr* for its cluster view (raises Refused when it does not answer)."""
    try:
        host, port = split_addr(addr)
    except ValueError as e:
        raise Refused(str(e)) from None
    try:
        with RespClient(host, port, password, timeout=5) as c:
            enabled = info(c, "cluster").get("cluster_enabled") == "1"
            cinfo = parse_info(c.command("CLUSTER", "INFO").decode()) if enabled else {}
            members, mine = parse_nodes(c.command("CLUSTER", "NODES").decode(), addr) if enabled else ({}, [])
            keys = int(c.command("DBSIZE"))
    except (OSError, RespError) as e:
        raise Refused(f"the KV server at {addr} does not answer: {e}") from None
    return Server(
        addr=addr,
        cluster_enabled=enabled,
        keys=keys,
        known_nodes=int(cinfo.get("cluster_known_nodes", 0)),
        slots_assigned=int(cinfo.get("cluster_slots_assigned", 0)),
        state=cinfo.get("cluster_state", ""),
        members=members,
        my_ranges=mine,
    )


def _in_cluster(s: Server) -> bool:
    """Whether *s* has met other servers (alone, it may still claim the slots of keys it loaded)."""
    return s.known_nodes > 1


def _require_empty(servers: Sequence[Server]) -> None:
    full = [f"{s.addr} ({s.keys} keys)" for s in servers if s.keys]
    if full:
        raise Refused(
            "a server joins the Redis Cluster only empty, and these hold keys written while they "
            f"ran standalone: {', '.join(full)}. The KV tier is a cache: empty them (FLUSHALL) or "
            "take them out of group kv; nothing was changed."
        )


def cli(args: Sequence[str], password: str) -> None:
    """Run ``redis-cli --cluster ...`` (password in the environment, never on the command line)."""
    env = {**os.environ, "REDISCLI_AUTH": password}
    proc = subprocess.run([REDIS_CLI, "--cluster", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0 or "[ERR]" in proc.stdout:
        raise RuntimeError(
            f"redis-cli --cluster {' '.join(args)} failed: {proc.stdout[-2000:]}{proc.stderr[-1000:]}"
        )


def plan(servers: Sequence[Server]) -> dict[str, object]:
    """What to do: ``create`` (all listed), or ``seed`` + ``add`` (listed servers outside the
    cluster), and the cluster's ``unlisted`` members. Raises Refused where nothing may change."""
    off = [s.addr for s in servers if not s.cluster_enabled]
    if off:
        raise Refused(f"not in cluster mode (cluster-enabled no): {', '.join(off)}")
    inside = [s for s in servers if _in_cluster(s)]
    if not inside:
        _require_empty(servers)
        return {"create": [s.addr for s in servers], "seed": None, "add": [], "unlisted": []}
    seed = max(inside, key=lambda s: s.known_nodes)
    listed = {s.addr for s in servers}
    add = [s for s in servers if s.addr not in seed.members]
    strays = [s.addr for s in add if _in_cluster(s)]
    if strays:
        raise Refused(f"{', '.join(strays)} belong to another cluster than {seed.addr}'s: reset them first")
    _require_empty(add)
    unlisted = sorted(set(seed.members) - listed)
    return {"create": [], "seed": seed.addr, "add": [s.addr for s in add], "unlisted": unlisted}


def wait_settled(addrs: Sequence[str], password: str, timeout_s: float) -> list[Server]:
    """Poll until every server sees all of *addrs*, state ok and every slot assigned."""
    deadline = time.monotonic() + timeout_s
    while True:
        servers = [read(a, password) for a in addrs]
        ok = all(
            s.state == "ok" and s.slots_assigned == SLOTS and set(addrs) <= set(s.members) for s in servers
        )
        if ok or time.monotonic() > deadline:
            return servers
        time.sleep(1)


def ensure(addrs: Sequence[str], password: str, timeout_s: float = 60.0) -> dict[str, object]:
    """Form or grow the cluster of *addrs* (see the module's docstring); the outcome as a dict."""
    todo = plan([read(a, password) for a in addrs])
    if todo["create"]:
        cli(["create", *addrs, "--cluster-replicas", "0", "--cluster-yes"], password)
    for addr in todo["add"]:
        cli(["add-node", addr, str(todo["seed"])], password)
    if todo["add"]:
        wait_settled(addrs, password, timeout_s)  # the new masters known everywhere, 0 slots
        cli(["rebalance", str(todo["seed"]), "--cluster-use-empty-masters", "--cluster-yes"], password)
    servers = wait_settled(addrs, password, timeout_s)
    return {
        "changed": bool(todo["create"] or todo["add"]),
        "created": todo["create"],
        "added": todo["add"],
        "unlisted": todo["unlisted"],
        "slots_assigned": min(s.slots_assigned for s in servers),
        "slots": {s.addr: s.my_slots for s in servers},
        "keys": {s.addr: s.keys for s in servers},
        "state": "ok" if all(s.state == "ok" for s in servers) else "fail",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m kvstack_node.redis_cluster ensure HOST:PORT...``: see the module's docstring."""
    p = argparse.ArgumentParser(prog="kvstack_node.redis_cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["ensure", "status", "plan"])
    p.add_argument("servers", nargs="+", metavar="HOST:PORT")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds the cluster may take to settle")
    a = p.parse_args(argv)
    password = os.environ.get("KV_PASSWORD", "")
    try:
        if a.action == "status":
            servers = [read(addr, password) for addr in a.servers]
            print(json.dumps([{**dataclasses.asdict(s), "my_slots": s.my_slots} for s in servers]))
            return 0
        if a.action == "plan":
            todo = plan([read(addr, password) for addr in a.servers])
            print(json.dumps({**todo, "changed": bool(todo["create"] or todo["add"])}))
            return 0
        out = ensure(a.servers, password, a.timeout)
    except Refused as e:
        print(json.dumps({"changed": False, "refused": str(e)}))
        return 2
    print(json.dumps(out))
    return 0 if out["state"] == "ok" and out["slots_assigned"] == SLOTS else 1


if __name__ == "__main__":
    sys.exit(main())
