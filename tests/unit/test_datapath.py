"""KV data-path bench (kvstack_node.datapath) against a local redis-server: exact round trips, errors,
row structure, the standalone script mode."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_redis import PASSWORD

from kvstack import results_schema as schema
from kvstack_node import datapath as dp
from kvstack_node import resp

HAS_LMCACHE = importlib.util.find_spec("lmcache") is not None


@pytest.fixture
def client(redis: tuple[str, int]) -> Iterator[resp.RespClient]:
    with resp.RespClient(*redis, PASSWORD) as c:
        yield c


# --- raw RESP client ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2, 3, 100, 65535, 65536, 65537, 1 << 20, (1 << 20) + 7])
def test_raw_resp_round_trip_exact(client: resp.RespClient, size: int) -> None:
    value = bytes(dp._pattern(size, seed=size))
    buf = bytearray(max(size, 16))
    client.set(f"t:{size}", memoryview(value))
    assert client.get_into(f"t:{size}", buf) == size
    assert bytes(buf[:size]) == value
    assert client.get(f"t:{size}") == value
    # a bytearray value and a reused buffer smaller than before
    client.set(b"t:again", bytearray(value[: size // 2]))
    assert client.get_into(b"t:again", buf) == size // 2
    assert bytes(buf[: size // 2]) == value[: size // 2]
    assert client.delete(f"t:{size}", b"t:again") == 2


def test_raw_resp_binary_bytes_including_crlf(client: resp.RespClient) -> None:
    value = b"\r\n$-1\r\n*2\r\n" * 1000 + b"\x00\xff"
    client.set("t:binary", value)
    buf = bytearray(len(value))
    assert client.get_into("t:binary", buf) == len(value)
    assert bytes(buf) == value
    client.delete("t:binary")


def test_raw_resp_missing_key(client: resp.RespClient) -> None:
    buf = bytearray(10)
    assert client.get_into("t:does-not-exist", buf) is None
    assert client.get("t:does-not-exist") is None
    assert client.command("PING") == "PONG"  # the connection is still in step


def test_raw_resp_value_larger_than_buffer(client: resp.RespClient) -> None:
    client.set("t:big", b"x" * 1000)
    with pytest.raises(resp.RespError, match="does not fit"):
        client.get_into("t:big", bytearray(10))
    assert client.get("t:big") == b"x" * 1000  # the oversize value was drained
    client.delete("t:big")


def test_raw_resp_wrong_password(redis: tuple[str, int]) -> None:
    with pytest.raises(resp.RespAuthError, match=r"AUTH refused by 127\.0\.0\.1"):
        resp.RespClient(*redis, "wrong-password")


def test_raw_resp_no_password_errors_clearly(redis: tuple[str, int]) -> None:
    with resp.RespClient(*redis) as c, pytest.raises(resp.RespError, match="NOAUTH"):
        c.get_into("t:any", bytearray(10))


# --- run_datapath ------------------------------------------------------------------------------


def test_run_datapath_rows(redis: tuple[str, int]) -> None:
    sizes = [64 * 1024, 256 * 1024]
    out = dp.run_datapath(*redis, PASSWORD, sizes=sizes, n=3)
    rows = out["kv_datapath"]
    refs = [r for r in rows if r["value_bytes"] is None]
    assert sorted(r["path"] for r in refs) == sorted([dp.PATH_MEMCPY, dp.PATH_LOOPBACK])
    paths = [dp.PATH_RAW_SET, dp.PATH_RAW_GET, dp.PATH_RAW_SET_PAR, dp.PATH_RAW_GET_PAR]
    if HAS_LMCACHE:
        paths += [dp.PATH_L2_STORE, dp.PATH_L2_RETRIEVE]
    else:
        assert any("LMCache" in m and "not importable" in m for m in out["missing"])
    sized = [r for r in rows if r["value_bytes"] is not None]
    assert sorted((r["path"], r["value_bytes"]) for r in sized) == sorted(
        (p, s) for p in paths for s in sizes
    )
    for r in rows:
        assert r["gb_per_s"] > 0
        assert set(r) >= {"path", "value_bytes", "gb_per_s"}
    for r in sized:
        assert r["n"] == 3
        assert r["p99_ms"] >= r["p50_ms"] > 0
    json.dumps(out)  # what results.json holds
    assert schema.problems(rows, list[schema.DatapathRow], "kv_datapath") == []
    with resp.RespClient(*redis, PASSWORD) as c:  # the bench cleans up after itself
        assert c.command("DBSIZE") == 0


def test_run_datapath_without_lmcache_or_references(redis: tuple[str, int]) -> None:
    out = dp.run_datapath(*redis, PASSWORD, sizes=[4096], n=2, lmcache=False, references=False)
    assert [r["path"] for r in out["kv_datapath"]] == [
        dp.PATH_RAW_SET,
        dp.PATH_RAW_GET,
        dp.PATH_RAW_SET_PAR,
        dp.PATH_RAW_GET_PAR,
    ]
    assert out["missing"] == []


def test_pipelined_many_round_trip_exact(client: resp.RespClient) -> None:
    value = bytes(dp._pattern(70_000, seed=3))
    keys = [f"t:many:{i}" for i in range(5)]
    client.set_many(keys, value)
    bufs = [bytearray(80_000) for _ in keys]
    assert client.get_many_into([*keys, "t:many:none"], [*bufs, bytearray(1)]) == [70_000] * 5 + [None]
    assert all(bytes(b[:70_000]) == value for b in bufs)
    client.command("LPUSH", "t:list", "x")  # SET on it works (SET replaces any type): still OK
    with pytest.raises(resp.RespError, match="does not fit"):
        client.get_many_into(keys[:1], [bytearray(10)])
    assert client.delete(*keys, "t:list") == 6


def test_parallel_reference_has_lmcaches_shape(redis: tuple[str, int]) -> None:
    """Two connections, tasks of 3 of 5 keys (a task of 3, then of 2): one timing per task, as
    LMCache's L2 rows have, and nothing left on the server."""
    rows = dp.bench_raw_parallel(*redis, PASSWORD, [65536], 5, workers=2, batch=3)
    assert [(r["path"], r["n"], r["batch"], r["num_workers"]) for r in rows] == [
        (dp.PATH_RAW_SET_PAR, 5, 3, 2),
        (dp.PATH_RAW_GET_PAR, 5, 3, 2),
    ]
    assert all(r["gb_per_s"] > 0 for r in rows)
    with resp.RespClient(*redis, PASSWORD) as c:
        assert c.command("DBSIZE") == 0


def test_l2_vs_raw() -> None:
    rows = [
        {"path": dp.PATH_RAW_GET, "value_bytes": 1024, "gb_per_s": 2.0},
        {"path": dp.PATH_RAW_GET_PAR, "value_bytes": 1024, "gb_per_s": 3.0},
        {"path": dp.PATH_L2_RETRIEVE, "value_bytes": 1024, "gb_per_s": 1.5},
        {"path": dp.PATH_RAW_GET, "value_bytes": 4096, "gb_per_s": 1.0},  # no L2 row
        {"path": dp.PATH_L2_STORE, "value_bytes": 4096, "gb_per_s": 1.0},
        {"path": dp.PATH_MEMCPY, "value_bytes": None, "gb_per_s": 9.0},
    ]
    assert dp.l2_vs_raw(rows) == {1024: 0.5}  # against the reference shaped as LMCache's path
    assert dp.l2_vs_raw(rows, dp.PATH_RAW_GET) == {1024: 0.75}


@pytest.mark.skipif(not HAS_LMCACHE, reason="lmcache is not importable in this interpreter")
def test_lmcache_l2_round_trip(redis: tuple[str, int]) -> None:
    rows, note = dp.bench_lmcache_l2(*redis, PASSWORD, [256 * 1024], 4)
    assert note is None
    assert {r["path"] for r in rows} == {dp.PATH_L2_STORE, dp.PATH_L2_RETRIEVE}


def test_lmcache_missing_gives_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lmcache", None)  # import lmcache -> ImportError
    rows, note = dp.bench_lmcache_l2("127.0.0.1", 1, None, [1024], 1)
    assert rows == []
    assert note and "not importable" in note


def test_script_mode_stdlib_only(redis: tuple[str, int], tmp_path: Path) -> None:
    """The node tools directory alone (what roles/node_tools installs), with only the standard
    library (-S: no site-packages, so no kvstack and no lmcache), password from the environment:
    one JSON object on stdout, the password nowhere."""
    shutil.copytree(Path(dp.__file__).parent, tmp_path / "kvstack_node")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(tmp_path), dp.PASSWORD_ENV: PASSWORD}
    cmd = [
        sys.executable,
        "-S",
        "-s",
        "-m",
        "kvstack_node.datapath",
        "datapath",
        "--host",
        redis[0],
        "--port",
    ]
    cmd += [str(redis[1]), "--sizes", "65536,131072", "--n", "2", "--no-references"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {(r["path"], r["value_bytes"]) for r in out["kv_datapath"]} == {
        (p, s)
        for p in (dp.PATH_RAW_SET, dp.PATH_RAW_GET, dp.PATH_RAW_SET_PAR, dp.PATH_RAW_GET_PAR)
        for s in (65536, 131072)
    }
    assert any("LMCache" in m for m in out["missing"])
    assert PASSWORD not in proc.stdout + proc.stderr
    assert "[datapath]" in proc.stderr  # its progress lines
