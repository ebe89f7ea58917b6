"""kvstack_node.redis_cluster against real redis-servers in cluster mode (Debian's, on loopback):
form a cluster of three, grow it to four with keys in place, refuse servers holding data."""

from __future__ import annotations

import contextlib
import json

import pytest
from local_redis import PASSWORD, local_redis

from kvstack_node import kv_cluster
from kvstack_node import redis_cluster as rc
from kvstack_node.kv_cluster import SLOTS
from kvstack_node.resp import RespClient

CLUSTER = ("--cluster-enabled", "yes", "--cluster-node-timeout", "2000", "--cluster-config-file")


@contextlib.contextmanager
def servers(tmp_path, n: int, cluster: bool = True):
    """*n* throwaway redis-servers (cluster mode unless told), as host:port strings."""
    with contextlib.ExitStack() as stack:
        out = []
        for i in range(n):
            d = tmp_path / f"r{i}"
            d.mkdir(parents=True)
            extra = (*CLUSTER, str(d / "nodes.conf"), "--masterauth", PASSWORD) if cluster else ()
            host, port = stack.enter_context(local_redis(d, *extra))
            out.append(f"{host}:{port}")
        yield out


def _keys_per_server(addrs: list[str]) -> dict[str, int]:
    counts = {}
    for a in addrs:
        host, port = a.rsplit(":", 1)
        with RespClient(host, int(port), PASSWORD) as c:
            counts[a] = int(c.command("DBSIZE"))
    return counts


def _write(addr: str, n_keys: int) -> None:
    """SET n keys through the cluster (following MOVED replies, as a cluster client does)."""
    for i in range(n_keys):
        key, target = f"k{i}", addr
        for _ in range(3):
            host, port = target.rsplit(":", 1)
            with RespClient(host, int(port), PASSWORD) as c:
                try:
                    c.command("SET", key, "v")
                    break
                except rc.RespError as e:
                    target = str(e).split()[-1]  # MOVED <slot> <host:port>


def test_form_then_grow_keeps_keys_and_spreads_slots(tmp_path):
    with servers(tmp_path, 4) as addrs:
        first = rc.ensure(addrs[:3], PASSWORD)
        assert first["changed"] and first["created"] == addrs[:3]
        assert first["state"] == "ok" and first["slots_assigned"] == SLOTS
        assert all(5400 <= n <= 5500 for n in first["slots"].values()), first["slots"]

        host, port = addrs[0].rsplit(":", 1)
        with RespClient(host, int(port), PASSWORD) as c:  # kv_cluster.key_slot computes as Redis does
            keys = [f"lmcache@{i}@{'{t}' if i % 5 == 0 else ''}x{i * 7919}" for i in range(60)]
            assert [kv_cluster.key_slot(k) for k in keys] == [
                int(c.command("CLUSTER", "KEYSLOT", k)) for k in keys
            ]

        again = rc.ensure(addrs[:3], PASSWORD)
        assert not again["changed"] and again["created"] == [] and again["added"] == []

        _write(addrs[0], 300)
        before = _keys_per_server(addrs[:3])
        assert sum(before.values()) == 300 and all(before.values()), before

        grown = rc.ensure(addrs, PASSWORD)
        assert grown["changed"] and grown["added"] == [addrs[3]]
        assert grown["state"] == "ok" and grown["slots_assigned"] == SLOTS
        assert all(4000 <= n <= 4200 for n in grown["slots"].values()), grown["slots"]
        after = _keys_per_server(addrs)
        assert sum(after.values()) == 300, after  # moved with their slots, none lost
        assert after[addrs[3]] > 0 and all(after[a] <= before[a] for a in addrs[:3])


def test_servers_holding_data_or_standalone_are_refused_unchanged(tmp_path, capsys, monkeypatch):
    old = tmp_path / "old"
    old.mkdir()
    with local_redis(old) as (host, port), RespClient(host, port, PASSWORD) as c:
        c.command("SET", "x", "1")  # written standalone, then the server is switched to cluster mode
        c.command("SAVE")
    monkeypatch.setenv("KV_PASSWORD", PASSWORD)
    with servers(tmp_path, 1) as (fresh,), local_redis(old, *CLUSTER, str(old / "nodes.conf")) as (h, p):
        addrs = [fresh, f"{h}:{p}"]
        assert rc.main(["ensure", *addrs]) == 2
        out = json.loads(capsys.readouterr().out)
        assert addrs[1] in out["refused"] and "1 keys" in out["refused"] and not out["changed"]
        assert all(rc.read(a, PASSWORD).known_nodes == 1 for a in addrs)  # nothing formed

    with (
        servers(tmp_path / "s", 1, cluster=False) as plain,
        pytest.raises(rc.Refused, match="cluster-enabled no"),
    ):
        rc.plan([rc.read(plain[0], PASSWORD)])
    with pytest.raises(rc.Refused, match="does not answer"):
        rc.read("127.0.0.1:1", PASSWORD)
