"""RocksDB engine bench (kvstack.rocksbench) with rocksdict: Kvrocks profile options really applied,
row structure, statistics parsing, the report's section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kvstack import report
from kvstack import results_schema as schema
from kvstack import rocksbench as rb

PROFILES_YML = yaml.safe_load(rb.profiles_file().read_text())
#: Kvrocks keys rocksdict cannot set (or Kvrocks does not apply without a rate limit).
UNMAPPED = {
    "delayed_write_rate",
    "max_background_compactions",
    "max_background_flushes",
    "rate_limiter_auto_tuned",
    "wal_compression",
}


def test_profile_options_nvme_large_values() -> None:
    opts = rb.profile_options("nvme_large_values")
    upstream = PROFILES_YML["kvrocks_rocksdb_upstream"]
    profile = PROFILES_YML["kvrocks_profiles"]["nvme_large_values"]
    assert opts == {**upstream, **profile}
    assert opts["enable_blob_files"] is True
    assert opts["min_blob_size"] == 65536
    assert opts["blob_file_size"] == 1073741824
    assert opts["write_buffer_size"] == 256
    assert opts["write_options.disable_wal"] is True
    assert opts["block_cache_size"] == 2048  # from the profile
    assert opts["block_cache_type"] == "lru"  # from upstream
    assert rb.profile_options("nvme_large_values", {"block_size": 4096})["block_size"] == 4096
    with pytest.raises(KeyError, match="unknown Kvrocks profile"):
        rb.profile_options("no-such-profile")


@pytest.mark.parametrize("profile", sorted(PROFILES_YML["kvrocks_profiles"]))
def test_every_profile_maps_all_but_the_known_keys(profile: str) -> None:
    *_, unmapped = rb.build_rocksdb_options(rb.profile_options(profile))
    assert set(unmapped) == UNMAPPED


def test_profile_options_reach_rocksdb(tmp_path: Path) -> None:
    """The OPTIONS file RocksDB writes holds the nvme_large_values settings (units converted)."""
    import rocksdict

    opts, wopts, _, _ = rb.build_rocksdb_options(rb.profile_options("nvme_large_values"))
    db = rocksdict.Rdict(str(tmp_path / "db"), opts)
    db.close()
    text = "\n".join(p.read_text() for p in (tmp_path / "db").glob("OPTIONS-*"))
    for line in (
        "enable_blob_files=true",
        "min_blob_size=65536",
        "blob_file_size=1073741824",
        f"write_buffer_size={256 << 20}",
        "max_write_buffer_number=6",
        f"target_file_size_base={256 << 20}",
        "max_bytes_for_level_base=1073741824",
        "level0_slowdown_writes_trigger=40",
        "level0_stop_writes_trigger=80",
        "max_background_jobs=8",
        "max_subcompactions=4",
        "max_open_files=-1",
        "compression=kNoCompression",
        "block_size=65536",
        "cache_index_and_filter_blocks=true",
    ):
        assert line in text, line
    assert wopts.disable_wal is True


def test_run_rocksdb_rows_and_blob_files(tmp_path: Path) -> None:
    sizes = [128 * 1024, 256 * 1024]
    out = rb.run_rocksdb(["nvme_large_values", "upstream"], sizes, 4, {"disk": str(tmp_path)})
    assert out["missing"] == []
    rows = out["rocksdb"]
    assert [(r["profile"], r["value_bytes"]) for r in rows] == [
        (p, s) for p in ("nvme_large_values", "upstream") for s in sizes
    ]
    for r in rows:
        assert r["medium"] == "disk"
        assert r["put_gb_per_s"] > 0 and r["get_gb_per_s"] > 0 and r["put_p99_ms"] > 0
        assert r["put_gb_per_s"] >= r["put_flush_gb_per_s"] > 0 and r["compactions_settled_s"] >= 0
        st = r["stats"]
        assert st["bytes_returned"] == 4 * r["value_bytes"]
        assert st["bytes_read_per_byte_returned"] >= 1.0  # flushed: every value read from a file
        assert st["block_cache_hit"] + st["block_cache_miss"] > 0
        assert "stall_micros" in st and "write_stall_count" in st
        assert set(r["unmapped"]) == UNMAPPED
        assert not UNMAPPED & {"enable_blob_files", "min_blob_size", "block_size"}
        if r["profile"] == "nvme_large_values":  # BlobDB: values in .blob files, WAL off
            assert st["blob_files_in_dir"] >= 1
            assert st["blob_file_bytes_read"] >= 4 * r["value_bytes"]
            assert st["wal_file_bytes"] == 0
        else:  # values inline in SSTs, through the block cache, WAL on
            assert st["blob_files_in_dir"] == 0
            assert st["block_cache_miss"] >= 1
            assert st["wal_file_bytes"] > 4 * r["value_bytes"]
    assert list(tmp_path.iterdir()) == []  # every temporary DB removed
    json.dumps(out)
    assert schema.problems(rows, list[schema.RocksdbRow], "rocksdb") == []


def test_run_rocksdb_missing_medium() -> None:
    out = rb.run_rocksdb(["upstream"], [1024], 1, {"nowhere": "/nonexistent/kvstack"})
    assert out["rocksdb"] == []
    assert out["missing"] and "/nonexistent/kvstack" in out["missing"][0]


def test_parse_rocksdb_statistics() -> None:
    text = (
        "rocksdb.block.cache.miss COUNT : 3\n"
        "rocksdb.db.write.stall P50 : 1.5 P95 : 2.0 P99 : 4.0 P100 : 5.0 COUNT : 7 SUM : 20\n"
        "garbage\n"
    )
    assert rb.parse_rocksdb_statistics(text) == {
        "rocksdb.block.cache.miss": 3,
        "rocksdb.db.write.stall": {"p50": 1.5, "p95": 2.0, "p99": 4.0, "p100": 5.0, "count": 7, "sum": 20},
    }


# --- report ------------------------------------------------------------------------------------


def test_report_rocksdb_section(tmp_path: Path) -> None:
    rows = [
        {
            "profile": p,
            "medium": m,
            "value_bytes": 1 << 20,
            "n": 4,
            "put_gb_per_s": 0.3,
            "put_flush_gb_per_s": 0.25,
            "get_gb_per_s": 1.2,
            "put_p99_ms": 12.5,
            "stats": {
                "block_cache_hit": 3,
                "block_cache_miss": 1,
                "bytes_read_per_byte_returned": 1.0,
                "stall_micros": 0,
                "write_stall_count": 0,
            },
            "unmapped": sorted(UNMAPPED),
        }
        for p in ("upstream", "dram")
        for m in ("disk", "tmpfs")
    ]
    results = {"runs": [], "rocksdb": rows}
    md = report.render_markdown(results)
    assert "### RocksDB engine (Kvrocks tuning profiles)" in md
    assert "| `dram` | tmpfs | 1 MiB | 0.30 | 0.25 | 1.20 | 12.5 | 3 / 1 | 1.00 | 0.0 | 0 |" in md
    assert "delayed_write_rate" in md
    assert md.index("## KV data path") < md.index("### RocksDB engine") < md.index("## Missing")
    images = report.write_plots(results, tmp_path)
    assert images.get("rocksdb") == "rocksdb.png"
    assert (tmp_path / "rocksdb.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Not measured in this run." in report.render_markdown({"runs": []})
