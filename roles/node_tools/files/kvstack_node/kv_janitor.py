"""The KV tier's capacity backstop: keep the KV server's data below its hard limit.

LMCache bounds what each serving node writes (``max_capacity_gb`` of its L2 adapter), but only
what that process wrote since it started: keys left by a restarted LMCache, or the same prefix
written by several nodes, are not counted anywhere. Redis with ``noeviction`` and Kvrocks (which
cannot evict) then refuse writes at their limit (a failed store: LMCache recomputes). This pass,
run by a timer on the KV node (roles/kv_janitor), keeps the store below that limit for good:

1. ``INFO``: the data size the server counts against its limit (redis: ``used_memory`` against
   ``maxmemory``; Kvrocks: ``used_db_size``, its SST files, against ``max-db-size`` GB) read
   from the server itself (``CONFIG GET``), so the limit is never configured twice.
2. Above ``high`` x limit it deletes the oldest keys until the estimate is at ``low`` x limit.
   Oldest: redis' ``OBJECT IDLETIME`` (least recently used first; a prompt's chunks were used
   together, so its prefix chain goes together); Kvrocks keeps no access time, so the remaining
   ``TTL`` (LMCache writes every key with the same TTL, ``lmcache_kv_ttl_s``): the first written
   first, keys without a TTL before all others.
3. Kvrocks frees the bytes of a deleted key only when RocksDB compacts: the bytes deleted are
   kept in a state file and counted as gone until ``used_db_size`` has dropped by as much.

Standard library only (with :mod:`kvstack_node.resp`, the project's RESP client), so it runs with
the KV node's own python3 from the node tools directory (roles/node_tools)::

    KVSTACK_KV_PASSWORD=... PYTHONPATH=/opt/kvstack/tools python3 -m kvstack_node.kv_janitor \
        --host H --port P --state /var/lib/x/state.json

One JSON line per pass on stdout (the journal). The password comes from the environment only.
Exit status 0 after a pass (deleting or not), 1 when the server could not be read.

With ``--textfile PATH`` each pass also writes its figures for node_exporter's textfile collector
(``kvstack_kv_used_bytes``, ``kvstack_kv_limit_bytes``, ``kvstack_kv_pending_bytes``,
``kvstack_kv_janitor_deleted_keys``, ``kvstack_kv_janitor_up``, ``kvstack_kv_janitor_last_pass_
timestamp_seconds``): Kvrocks' data size against its limit, which no Redis exporter reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvstack_node.resp import RespClient, RespError

GiB = 1 << 30
#: Keys per SCAN step and per pipelined batch of TTL/IDLETIME/STRLEN/DEL.
BATCH = 500


@dataclass
class Usage:
    """What the server counts against its limit, in bytes."""

    server: str  # "redis" or "kvrocks"
    used: int
    limit: int  # 0: no limit set


def parse_info(text: str) -> dict[str, str]:
    """``INFO``'s ``key:value`` lines (sections and comments dropped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def _config(client: RespClient, name: str) -> str:
    reply = client.command("CONFIG", "GET", name)
    vals = [x.decode() if isinstance(x, bytes) else str(x) for x in reply or []]
    return vals[1] if len(vals) >= 2 else "0"


def info(client: RespClient, *section: str) -> dict[str, str]:
    """``INFO [section]``'s fields."""
    raw = client.command("INFO", *section)
    return parse_info(raw.decode() if isinstance(raw, bytes) else str(raw))


def read_usage(client: RespClient) -> Usage:
    """Server kind, used bytes and limit, from ``INFO`` and ``CONFIG GET``.

    Kvrocks answers ``INFO`` with a ``kvrocks_version`` field (apache/kvrocks
    ``Server::GetServerInfo``) and counts ``max-db-size`` in GiB (``max_db_size * GiB``);
    redis has ``redis_version``, ``used_memory`` and ``maxmemory`` in bytes.
    """
    fields = info(client)
    if "kvrocks_version" in fields:
        return Usage(
            "kvrocks", int(fields.get("used_db_size", "0")), int(_config(client, "max-db-size")) * GiB
        )
    return Usage("redis", int(fields.get("used_memory", "0")), int(_config(client, "maxmemory")))


def scan_keys(client: RespClient) -> Iterator[list[bytes]]:
    """All keys, one SCAN page at a time (Kvrocks' cursors are strings, redis' numbers: both pass through)."""
    cursor: bytes | str = "0"
    while True:
        cursor, keys = client.command("SCAN", cursor, "COUNT", str(BATCH))
        if keys:
            yield list(keys)
        if cursor in (b"0", "0"):
            return


def key_ages(client: RespClient, server: str) -> list[tuple[float, int, bytes]]:
    """``(age rank, bytes, key)`` of every key; larger rank = delete first.

    redis: idle seconds. Kvrocks: minus the remaining TTL (same TTL on every write, so the
    smallest remaining TTL was written first); keys without TTL rank above every other.
    """
    out: list[tuple[float, int, bytes]] = []
    age_cmd = ("OBJECT", "IDLETIME") if server == "redis" else ("TTL",)
    for keys in scan_keys(client):
        replies = client.pipeline([c for k in keys for c in ((*age_cmd, k), ("STRLEN", k))])
        for i, k in enumerate(keys):
            age, size = replies[2 * i], replies[2 * i + 1]
            if not isinstance(age, int) or not isinstance(size, int) or age == -2:
                continue  # gone meanwhile, or not a string
            rank = float(age) if server == "redis" else (float("inf") if age < 0 else -float(age))
            out.append((rank, size, k))
    out.sort(key=lambda t: t[0], reverse=True)
    return out


def delete_oldest(client: RespClient, server: str, to_free: int) -> tuple[int, int]:
    """Delete the oldest keys until *to_free* bytes are gone: ``(keys, bytes)`` deleted."""
    victims: list[bytes] = []
    freed = 0
    for _, size, key in key_ages(client, server):
        if freed >= to_free:
            break
        victims.append(key)
        freed += size
    deleted = 0
    for i in range(0, len(victims), BATCH):
        deleted += sum(
            r for r in client.pipeline([("DEL", k) for k in victims[i : i + BATCH]]) if isinstance(r, int)
        )
    return deleted, freed


def load_state(path: Path | None) -> dict[str, int]:
    """Kvrocks' bytes deleted but not yet compacted away: ``{"pending": B, "used_then": B}``."""
    if path is None or not path.exists():
        return {"pending": 0, "used_then": 0}
    try:
        d = json.loads(path.read_text())
        return {"pending": int(d.get("pending", 0)), "used_then": int(d.get("used_then", 0))}
    except (ValueError, OSError):
        return {"pending": 0, "used_then": 0}


def effective_used(usage: Usage, state: dict[str, int]) -> tuple[int, int]:
    """``(used bytes net of deletions still to be compacted, pending bytes left)``.

    What ``used_db_size`` lost since the deletion was compacted away; the rest is still pending.
    """
    if usage.server != "kvrocks" or state["pending"] <= 0:
        return usage.used, 0
    dropped = max(0, state["used_then"] - usage.used)
    pending = max(0, state["pending"] - dropped)
    return max(0, usage.used - pending), pending


def one_pass(client: RespClient, high: float, low: float, state_path: Path | None) -> dict[str, Any]:
    """Read usage, delete when above *high* x limit; the pass's figures for the journal."""
    usage = read_usage(client)
    state = load_state(state_path)
    used, pending = effective_used(usage, state)
    report: dict[str, Any] = {
        "server": usage.server,
        "used_bytes": usage.used,
        "limit_bytes": usage.limit,
        "pending_bytes": pending,
        "deleted_keys": 0,
        "deleted_bytes": 0,
    }
    if usage.limit > 0 and used > high * usage.limit:
        keys, freed = delete_oldest(client, usage.server, int(used - low * usage.limit))
        report.update(deleted_keys=keys, deleted_bytes=freed)
        pending += freed
    if state_path is not None and usage.server == "kvrocks":
        state_path.write_text(json.dumps({"pending": pending, "used_then": usage.used}))
    return report


#: the pass report's figures written to the textfile, as (metric, report key, help)
TEXTFILE_GAUGES = (
    ("kvstack_kv_used_bytes", "used_bytes", "Data the KV server counts against its limit."),
    ("kvstack_kv_limit_bytes", "limit_bytes", "The KV server's hard limit (0: none set)."),
    ("kvstack_kv_pending_bytes", "pending_bytes", "Bytes deleted but not yet freed (Kvrocks compaction)."),
    ("kvstack_kv_janitor_deleted_keys", "deleted_keys", "Keys the last pass deleted."),
)


def write_textfile(path: Path, report: dict[str, Any], ok: bool) -> None:
    """The pass's figures in Prometheus' text format, replacing *path* atomically (node_exporter
    must never read half a file)."""
    lines = []
    for name, key, text in TEXTFILE_GAUGES if ok else ():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {report[key]}"]
    lines += [
        "# HELP kvstack_kv_janitor_up Whether the last pass read the KV server.",
        "# TYPE kvstack_kv_janitor_up gauge",
        f"kvstack_kv_janitor_up {int(ok)}",
        "# HELP kvstack_kv_janitor_last_pass_timestamp_seconds When the last pass ran.",
        "# TYPE kvstack_kv_janitor_last_pass_timestamp_seconds gauge",
        f"kvstack_kv_janitor_last_pass_timestamp_seconds {time.time():.0f}",
    ]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o644)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(prog="kv_janitor", description="Keep the KV server below its limit.")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--high", type=float, default=0.9, help="start deleting above this share of the limit")
    p.add_argument("--low", type=float, default=0.7, help="delete down to this share of the limit")
    p.add_argument("--state", type=Path, default=None, help="state file (Kvrocks' pending bytes)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--textfile", type=Path, default=None, help="also write the figures here (node_exporter)")
    a = p.parse_args(argv)
    if not 0 < a.low < a.high <= 1:
        p.error(f"need 0 < --low < --high <= 1, got --low {a.low} --high {a.high}")
    t0 = time.monotonic()
    try:
        with RespClient(
            a.host, a.port, password=os.environ.get("KVSTACK_KV_PASSWORD") or None, timeout=a.timeout
        ) as client:
            report = one_pass(client, a.high, a.low, a.state)
    except (OSError, RespError) as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}", "server": f"{a.host}:{a.port}"}), flush=True)
        if a.textfile:
            write_textfile(a.textfile, {}, ok=False)
        return 1
    if a.textfile:
        write_textfile(a.textfile, report, ok=True)
    report["seconds"] = round(time.monotonic() - t0, 3)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
