"""kvstack_node.kv_janitor against a real redis-server (and Kvrocks' INFO text from upstream's format)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from local_redis import PASSWORD, local_redis

from kvstack_node import kv_janitor as kj
from kvstack_node import resp as dp

DATA = Path(__file__).parent / "data"
VALUE = 256 * 1024


@pytest.fixture
def client(tmp_path: Path):
    """A fresh redis (own process: the test changes maxmemory) with noeviction, as Kvrocks behaves."""
    with local_redis(tmp_path) as (host, port), dp.RespClient(host, port, PASSWORD) as c:
        c.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        yield c


def _fill(c: dp.RespClient, prefix: str, n: int) -> list[str]:
    keys = [f"{prefix}{i}" for i in range(n)]
    for k in keys:
        c.set(k, bytes(VALUE))
    return keys


def test_parse_info_reads_kvrocks_fields_and_tells_the_server_apart():
    info = kj.parse_info((DATA / "kvrocks-2.10-info.txt").read_text())
    assert info["kvrocks_version"] == "2.10.1"
    assert int(info["used_db_size"]) == 2147483648
    assert "used_memory" not in info  # what made the bench read 0 MB from Kvrocks before


def test_below_the_high_mark_nothing_is_deleted(client: dp.RespClient):
    keys = _fill(client, "k", 10)
    used = kj.read_usage(client).used
    client.command("CONFIG", "SET", "maxmemory", str(int(used / 0.5)))
    report = kj.one_pass(client, high=0.9, low=0.7, state_path=None)
    assert report["server"] == "redis" and report["deleted_keys"] == 0
    assert client.command("DBSIZE") == len(keys)


def test_above_the_high_mark_the_least_recently_used_keys_go_first(client: dp.RespClient):
    old = _fill(client, "old", 40)
    time.sleep(2.2)  # redis' LRU clock counts whole seconds
    new = _fill(client, "new", 20)
    kept_old = old[:5]
    for k in kept_old:
        assert client.get(k) is not None  # touched: recently used again
    used = kj.read_usage(client).used
    limit = int(used / 0.95)
    client.command("CONFIG", "SET", "maxmemory", str(limit))
    report = kj.one_pass(client, high=0.9, low=0.7, state_path=None)
    assert report["deleted_keys"] > 0
    after = kj.read_usage(client)
    assert after.used <= 0.75 * limit, (after.used, limit)
    alive = {k for k in old + new if client.command("EXISTS", k)}
    assert set(new) <= alive and set(kept_old) <= alive  # only untouched old keys went
    assert len(alive) == len(old) + len(new) - report["deleted_keys"]


def test_kvrocks_order_is_first_written_first_by_remaining_ttl(client: dp.RespClient):
    client.set("no-ttl", bytes(VALUE))
    for i, ttl in enumerate((1000, 3000, 2000)):
        client.set(f"t{i}", bytes(VALUE))
        client.command("EXPIRE", f"t{i}", str(ttl))
    order = [k.decode() for _, _, k in kj.key_ages(client, "kvrocks")]
    assert order == ["no-ttl", "t0", "t2", "t1"]
    assert all(size == VALUE for _, size, _ in kj.key_ages(client, "kvrocks"))


def test_kvrocks_deleted_bytes_count_as_gone_until_compaction_frees_them(tmp_path: Path):
    state = {"pending": 300, "used_then": 1000}
    # Not compacted yet: used_db_size still 1000, all 300 pending.
    assert kj.effective_used(kj.Usage("kvrocks", 1000, 2000), state) == (700, 300)
    # Compaction freed 200 of them (and nothing else changed): 100 left pending.
    assert kj.effective_used(kj.Usage("kvrocks", 800, 2000), state) == (700, 100)
    # Freed all and more: nothing pending. Redis frees at once: never pending.
    assert kj.effective_used(kj.Usage("kvrocks", 500, 2000), state) == (500, 0)
    assert kj.effective_used(kj.Usage("redis", 1000, 2000), state) == (1000, 0)
    path = tmp_path / "state.json"
    assert kj.load_state(path) == {"pending": 0, "used_then": 0}
    path.write_text("not json")
    assert kj.load_state(path) == {"pending": 0, "used_then": 0}


def test_command_line_reports_one_json_line_and_hides_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    with local_redis(tmp_path) as (host, port):
        monkeypatch.setenv("KVSTACK_KV_PASSWORD", PASSWORD)
        assert kj.main(["--host", host, "--port", str(port)]) == 0
        out = capsys.readouterr().out
        assert '"server": "redis"' in out and PASSWORD not in out
        monkeypatch.setenv("KVSTACK_KV_PASSWORD", "bad-secret-9")
        assert kj.main(["--host", host, "--port", str(port)]) == 1
        out = capsys.readouterr().out
        assert '"error"' in out and "bad-secret-9" not in out
    with pytest.raises(SystemExit):
        kj.main(["--host", "h", "--port", "1", "--low", "0.9", "--high", "0.8"])
