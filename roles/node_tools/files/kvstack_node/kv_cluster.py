"""The sharded KV tier's topology, computed from the inventory (issue: the KV tier across several
servers). Pure functions, standard library only; applying them to live servers is the roles' job.

- :func:`node_id`: a stable 40-character node id from a host's inventory name, so the topology
  pushed to Kvrocks (``CLUSTERX SETNODEID`` / ``SETNODES``) is the same on every run.
- :func:`plan_slots`: which of the 16,384 hash slots each master serves. Given the assignment in
  place, it keeps every slot where it is unless its master left or holds more than its even
  share, and hands the rest to the masters below their share: growing from N to N+1 masters moves
  about 1/(N+1) of the slots, all to the new one, and every key whose slot stays keeps serving.
- :func:`moves`: the slots that change master between two assignments (what must be migrated).
- :func:`key_slot`: the hash slot of a key (CRC16 of the key or its ``{hash tag}``, mod 16,384),
  as Redis Cluster and Kvrocks compute it.
- :func:`cluster_nodes`: ``CLUSTER NODES`` text (Redis' and Kvrocks' format) as one
  :class:`NodeLine` per member; :func:`split_addr`: ``host:port`` into its parts.
- :func:`setnodes`: Kvrocks' ``CLUSTERX SETNODES`` text of a topology (one line per node:
  ``<id> <ip> <port> master - <slots>`` or ``<id> <ip> <port> slave <master id>``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: Redis Cluster's and Kvrocks' hash slots
SLOTS = 16384


def _crc16(data: bytes) -> int:
    """CRC16-CCITT (XModem), the checksum of Redis Cluster's key hashing."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def key_slot(key: str | bytes) -> int:
    """The hash slot of *key*: CRC16 of the key, or of its hash tag (the text between the first
    ``{`` and the next ``}``, when not empty), modulo 16,384."""
    k = key.encode() if isinstance(key, str) else key
    start = k.find(b"{")
    if start >= 0:
        end = k.find(b"}", start + 1)
        if end > start + 1:
            k = k[start + 1 : end]
    return _crc16(k) % SLOTS


def node_id(name: str) -> str:
    """A node's cluster id: the SHA-1 of its inventory name (40 hex characters)."""
    return hashlib.sha1(name.encode()).hexdigest()


def shares(masters: Sequence[str]) -> dict[str, int]:
    """Each master's even share of the slots, in *masters*' order (the first ones get one more
    when the slots do not divide evenly)."""
    if not masters:
        raise ValueError("a cluster needs at least one master")
    if len(set(masters)) != len(masters):
        raise ValueError(f"a master is listed twice: {list(masters)}")
    base, extra = divmod(SLOTS, len(masters))
    return {m: base + (1 if i < extra else 0) for i, m in enumerate(masters)}


def plan_slots(current: Mapping[str, Iterable[int]], masters: Sequence[str]) -> dict[str, set[int]]:
    """The slots of each of *masters*, moving as few as possible from *current* (master -> slots
    it serves now; masters not in *masters* are leaving). Every slot is assigned exactly once."""
    quota = shares(masters)
    owner: dict[int, str] = {}
    for m, slots in current.items():
        for s in slots:
            if not 0 <= s < SLOTS:
                raise ValueError(f"slot {s} of {m} is not in 0-{SLOTS - 1}")
            if s in owner:
                raise ValueError(f"slot {s} is served by both {owner[s]} and {m}")
            owner[s] = m
    out: dict[str, set[int]] = {m: set() for m in masters}
    free: list[int] = []
    for s in range(SLOTS):
        m = owner.get(s)
        if m in out and len(out[m]) < quota[m]:
            out[m].add(s)
        else:
            free.append(s)
    for m in masters:  # the free slots, lowest first, to each master up to its share
        need = quota[m] - len(out[m])
        out[m].update(free[:need])
        del free[:need]
    return out


def moves(
    current: Mapping[str, Iterable[int]], target: Mapping[str, Iterable[int]]
) -> dict[int, tuple[str | None, str]]:
    """Slot -> (master now or None, master in *target*) for every slot whose master changes."""
    was = {s: m for m, slots in current.items() for s in slots}
    return {s: (was.get(s), m) for m, slots in target.items() for s in slots if was.get(s) != m}


def ranges(slots: Iterable[int]) -> list[tuple[int, int]]:
    """*slots* as sorted inclusive ranges."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(slots)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def split_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as (host, port); ValueError when it is not one."""
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{addr!r} is not host:port")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class NodeLine:
    """One line of ``CLUSTER NODES``: the member's id, its ``host:port`` (host empty while a
    server has met no other), whether it is the server answering, and the slots it serves as
    inclusive ranges (slots being migrated or imported, ``[...]``, left out)."""

    id: str
    addr: str
    myself: bool
    ranges: tuple[tuple[int, int], ...]


def cluster_nodes(text: str) -> list[NodeLine]:
    """``CLUSTER NODES`` text (``<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong>
    <epoch> <link> <slot spans...>``, Redis' and Kvrocks' alike) as one :class:`NodeLine` each."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        spans = [x.partition("-") for x in f[8:] if not x.startswith("[")]
        out.append(
            NodeLine(
                id=f[0],
                addr=f[1].split("@")[0].split(",")[0],
                myself="myself" in f[2].split(","),
                ranges=tuple((int(a), int(b or a)) for a, _, b in spans),
            )
        )
    return out


@dataclass(frozen=True)
class Node:
    """A cluster member: its inventory name, the address clients reach it at, and for a replica
    the name of its master (None: a master)."""

    name: str
    ip: str
    port: int
    master: str | None = None


def setnodes(nodes: Sequence[Node], slots: Mapping[str, Iterable[int]]) -> str:
    """Kvrocks' ``CLUSTERX SETNODES`` topology text: masters with their slot ranges (``a-b``, or
    ``a`` for one slot), replicas with their master's id; ids from :func:`node_id`."""
    master_of = {n.name: n.master for n in nodes}
    owner: dict[int, str] = {}
    for n in nodes:
        for s in slots.get(n.name, ()) if n.master is None else ():
            if s in owner:
                raise ValueError(f"slot {s} is given to both {owner[s]} and {n.name}")
            owner[s] = n.name
    lines = []
    for n in nodes:
        if n.master is None:
            spans = " ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges(slots.get(n.name, ())))
            lines.append(f"{node_id(n.name)} {n.ip} {n.port} master - {spans}".rstrip())
        elif n.master not in master_of or master_of[n.master] is not None:
            raise ValueError(f"{n.name}: its master {n.master} is not a master of this cluster")
        else:
            lines.append(f"{node_id(n.name)} {n.ip} {n.port} slave {node_id(n.master)}")
    return "\n".join(lines)
