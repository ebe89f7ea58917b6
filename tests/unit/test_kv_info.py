"""The KV server's INFO as the bench reads it (kvstack.metrics): a real redis-server's, and
Kvrocks 2.10's, whose reply (tests/unit/data/kvrocks-2.10-info.txt) was assembled from the format
strings of apache/kvrocks' ``Server::GetInfo`` and its sections (``GetServerInfo`` ...
``GetRocksDBInfo``) as of 2.10: field names, order and number formats are upstream's, every value
is made up. Both go through redis-py's own INFO parser, as stack._kv_info does."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis as redis_py
from local_redis import PASSWORD
from redis._parsers.helpers import parse_info

from kvstack import metrics as m

# stored with LF endings; on the wire each line ends in CRLF
KVROCKS_INFO = (Path(__file__).parent / "data" / "kvrocks-2.10-info.txt").read_text().replace("\n", "\r\n")


def kvrocks(**changes: int) -> m.Snapshot:
    """Kvrocks' INFO with some fields changed (as after a run)."""
    lines = []
    for line in KVROCKS_INFO.split("\r\n"):
        key = line.split(":", 1)[0]
        lines.append(f"{key}:{changes[key]}" if key in changes else line)
    return m.parse_info(parse_info("\r\n".join(lines)))


def test_kvrocks_info_gives_size_keys_stalls_and_cache_figures():
    before = kvrocks()
    after = kvrocks(
        total_commands_processed=9875311 + 1000,
        total_net_input_bytes=1046523377 + 50_000_000,
        used_db_size=3 * 2**30,
        **{"estimate_keys[metadata]": 1048576 + 200, "memtable_count_limit_stop[default]": 2},
        block_cache_hit=392172 + 300,
        block_cache_miss=96464 + 100,
        flush_count=14,
    )
    assert "block_cache_usage" not in after.counters and "block_cache_hit" in after.counters
    assert "level0_file_limit_stop[default]" in after.counters and "flush_count" in after.counters
    assert "estimate_keys[metadata]" not in after.counters  # a gauge
    out = m.kv_figures([m.delta(before, after)])
    assert out["KV server commands"] == 1000 and out["KV server MB in"] == 50.0
    assert out["KV server used MB"] == 3 * 1024  # used_db_size: Kvrocks has no used_memory
    assert out["KV server disk used MB"] == 204800 and out["KV server RSS MB"] == 175.2
    assert out["KV server keys (estimate)"] == 1048776  # not db0's keys, stale until DBSIZE SCAN
    assert out["KV server write stalls"] == 2
    assert out["KV server block cache hit rate"] == pytest.approx(0.75)
    assert (out["KV server flushes"], out["KV server compactions"]) == (2, 0)
    assert "KV server keys" not in out


def test_redis_info_gives_used_memory_and_keys(redis):
    client = redis_py.Redis(host=redis[0], port=redis[1], password=PASSWORD)
    before = m.parse_info(client.info("all"))
    for i in range(5):
        client.set(f"kvstack-test:{i}", b"x" * 100_000)
    after = m.parse_info(client.info("all"))
    client.delete(*(f"kvstack-test:{i}" for i in range(5)))
    client.close()
    out = m.kv_figures([m.delta(before, after)])
    assert out["KV server keys"] == 5
    assert out["KV server used MB"] >= 0.5  # 500 kB of values
    assert out["KV server commands"] >= 6 and out["KV server MB in"] >= 0.5
    assert "KV server write stalls" not in out


def test_a_sharded_tier_sums_its_members_and_shows_each(redis):
    """Two members' deltas (here the same server read twice over different writes): the figures
    are their sums, and each member's bytes in are listed in kv_access_nodes' order."""
    client = redis_py.Redis(host=redis[0], port=redis[1], password=PASSWORD)
    deltas = []
    for n in (1, 3):
        before = m.parse_info(client.info("all"))
        for i in range(n):
            client.set(f"kvstack-shard:{i}", b"x" * 1_000_000)
        deltas.append(m.delta(before, m.parse_info(client.info("all"))))
    client.delete(*(f"kvstack-shard:{i}" for i in range(3)))
    client.close()
    out = m.kv_figures(deltas)
    assert out["KV shard 1 MB in"] == pytest.approx(1.0, abs=0.05)
    assert out["KV shard 2 MB in"] == pytest.approx(3.0, abs=0.05)
    assert out["KV server MB in"] == pytest.approx(
        out["KV shard 1 MB in"] + out["KV shard 2 MB in"], abs=0.15
    )
    assert "KV shard 1 MB in" not in m.kv_figures(deltas[:1])  # one server: no shard rows
