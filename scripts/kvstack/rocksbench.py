"""The RocksDB engine bench: Kvrocks's tuning profiles measured on the engine itself.

The RocksDB engine bench opens a RocksDB (the ``rocksdict`` binding) with the options of each
Kvrocks tuning profile (``roles/kvrocks/vars/profiles.yml``) on disk and on tmpfs, puts and gets
KV-cache-sized values and reads RocksDB's own statistics. Rows (``results["rocksdb"]``)::

    {"profile": "nvme_large_values", "medium": "disk", "dir": "/var/tmp", "value_bytes": 1048576,
     "n": 16, "put_gb_per_s": 0.3, "get_gb_per_s": 1.2, "put_p50_ms": 2.0, "put_p99_ms": 40.0,
     "get_p50_ms": 0.6, "get_p99_ms": 1.0, "flush_s": 0.05,
     "stats": {"block_cache_hit": 3, "block_cache_miss": 1, "bytes_read_per_byte_returned": 1.0,
               "stall_micros": 0, "write_stall_count": 0, ...},
     "unmapped": ["delayed_write_rate", ...]}

Kvrocks itself cannot run on the lab's machines (facts.md: not in the registries, its build fetches
from the internet); this measures its engine, RocksDB, with each profile's options, on disk and on
tmpfs, on the controller. ``python -m kvstack.rocksbench`` prints the rows as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kvstack import REPO
from kvstack_node.datapath import MiB, _gbps, _latency_cols, _pattern, _sizes, progress

#: Value sizes of the default run.
ROCKSDB_SIZES: tuple[int, ...] = (1 * MiB, 4 * MiB)
#: Where the temporary databases go, per medium.
MEDIA: dict[str, str] = {"disk": "/var/tmp", "tmpfs": "/dev/shm"}


def profiles_file() -> Path:
    """``roles/kvrocks/vars/profiles.yml`` of this checkout."""
    return REPO / "roles" / "kvrocks" / "vars" / "profiles.yml"


def load_profiles(path: Path | None = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``(kvrocks_rocksdb_upstream, kvrocks_profiles)`` from profiles.yml."""
    import yaml

    data = yaml.safe_load((path or profiles_file()).read_text())
    return dict(data["kvrocks_rocksdb_upstream"]), {
        k: dict(v or {}) for k, v in data["kvrocks_profiles"].items()
    }


def profile_options(
    name: str, overrides: Mapping[str, Any] | None = None, path: Path | None = None
) -> dict[str, Any]:
    """The rocksdb.* settings Kvrocks runs with for profile *name*: upstream's defaults, the
    profile merged over them, *overrides* (the role's ``kvrocks_rocksdb_overrides``) over that."""
    upstream, profiles = load_profiles(path)
    if name not in profiles:
        raise KeyError(f"unknown Kvrocks profile {name!r}; known: {', '.join(profiles)}")
    return {**upstream, **profiles[name], **(overrides or {})}


def _flag(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("yes", "true", "on", "1")
    return bool(v)


#: Kvrocks keys in MB whose RocksDB option is in bytes.
_MB_KEYS = ("write_buffer_size", "target_file_size_base", "max_total_wal_size")
#: Kvrocks key -> rocksdict Options setter, value passed as is (int) or as a flag (bool).
_INT_SETTERS = {
    "max_open_files": "set_max_open_files",
    "max_write_buffer_number": "set_max_write_buffer_number",
    "max_background_jobs": "set_max_background_jobs",
    "max_subcompactions": "set_max_subcompactions",
    "wal_ttl_seconds": "set_wal_ttl_seconds",
    "wal_size_limit_mb": "set_wal_size_limit_mb",
    "compaction_readahead_size": "set_compaction_readahead_size",
    "level0_slowdown_writes_trigger": "set_level_zero_slowdown_writes_trigger",
    "level0_stop_writes_trigger": "set_level_zero_stop_writes_trigger",
    "level0_file_num_compaction_trigger": "set_level_zero_file_num_compaction_trigger",
    "stats_dump_period_sec": "set_stats_dump_period_sec",
    "min_blob_size": "set_min_blob_size",
    "blob_file_size": "set_blob_file_size",
    "max_bytes_for_level_base": "set_max_bytes_for_level_base",
}
_BOOL_SETTERS = {
    "enable_pipelined_write": "set_enable_pipelined_write",
    "disable_auto_compactions": "set_disable_auto_compactions",
    "enable_blob_files": "set_enable_blob_files",
    "enable_blob_garbage_collection": "set_enable_blob_gc",
    "level_compaction_dynamic_level_bytes": "set_level_compaction_dynamic_level_bytes",
}
_WRITE_OPTIONS = ("sync", "disable_wal", "no_slowdown", "low_pri", "memtable_insert_hint_per_batch")
#: RocksDB's default number of levels (compression_start_level builds a per-level list).
_NUM_LEVELS = 7


def build_rocksdb_options(settings: Mapping[str, Any]) -> tuple[Any, Any, Any, list[str]]:
    """rocksdict ``(Options, WriteOptions, ReadOptions, unmapped)`` for Kvrocks rocksdb.* *settings*.

    Units follow kvrocks.conf: ``block_cache_size``, ``write_buffer_size``,
    ``target_file_size_base``, ``max_total_wal_size`` and ``row_cache_size`` in MB,
    ``blob_garbage_collection_age_cutoff`` in percent, ``compression_start_level`` as Kvrocks applies
    it (no compression below that level). ``unmapped`` lists the keys rocksdict has no setter for
    (e.g. ``delayed_write_rate``, ``wal_compression``, the deprecated
    ``max_background_compactions``/``flushes``) and ``rate_limiter_auto_tuned``, which Kvrocks only
    applies with a rate limit (``max-io-mb`` > 0) that the profiles do not set.
    Statistics are enabled; values are raw bytes (``raw_mode``).
    """
    import rocksdict as rd

    opts = rd.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.enable_statistics()
    table = rd.BlockBasedOptions()
    wopts, ropts = rd.WriteOptions(), rd.ReadOptions()
    unmapped: list[str] = []
    s = dict(settings)

    compressions = {
        "no": rd.DBCompressionType.none,
        "none": rd.DBCompressionType.none,
        "snappy": rd.DBCompressionType.snappy,
        "lz4": rd.DBCompressionType.lz4,
        "zstd": rd.DBCompressionType.zstd,
        "zlib": rd.DBCompressionType.zlib,
    }
    for key, v in s.items():
        if key in _INT_SETTERS:
            getattr(opts, _INT_SETTERS[key])(int(v))
        elif key in _BOOL_SETTERS:
            getattr(opts, _BOOL_SETTERS[key])(_flag(v))
        elif key in _MB_KEYS:
            getattr(opts, f"set_{key}")(int(v) * MiB)
        elif key == "max_bytes_for_level_multiplier":
            opts.set_max_bytes_for_level_multiplier(float(v))
        elif key == "blob_garbage_collection_age_cutoff":
            opts.set_blob_gc_age_cutoff(float(v) / 100)
        elif key == "block_size":
            table.set_block_size(int(v))
        elif key == "cache_index_and_filter_blocks":
            table.set_cache_index_and_filter_blocks(_flag(v))
        elif key == "block_cache_size":
            if str(s.get("block_cache_type", "lru")).lower() == "lru":
                table.set_block_cache(rd.Cache(int(v) * MiB))
            else:
                table.set_block_cache(rd.Cache.new_hyper_clock_cache(int(v) * MiB, 0))
        elif key == "block_cache_type":
            if str(v).lower() not in ("lru", "hcc"):
                unmapped.append(key)
        elif key == "row_cache_size":
            if int(v) > 0:
                opts.set_row_cache(rd.Cache(int(v) * MiB))
        elif key == "compression":
            if str(v).lower() not in compressions:
                unmapped.append(key)
        elif key in ("compression_level", "compression_start_level"):
            pass  # applied with "compression" below
        elif key == "read_options.async_io":
            ropts.set_async_io(_flag(v))
        elif key.startswith("write_options.") and key.split(".", 1)[1] in _WRITE_OPTIONS:
            setattr(wopts, key.split(".", 1)[1], _flag(v))
        else:
            unmapped.append(key)

    _apply_compression(rd, opts, s, compressions)
    opts.set_block_based_table_factory(table)
    return opts, wopts, ropts, sorted(unmapped)


def _apply_compression(rd: Any, opts: Any, s: Mapping[str, Any], compressions: Mapping[str, Any]) -> None:
    """``compression``, ``compression_level`` and ``compression_start_level`` as Kvrocks applies
    them (no compression below the start level)."""
    comp_name = str(s.get("compression", "snappy")).lower()
    if comp_name not in compressions:
        return
    comp = compressions[comp_name]
    opts.set_compression_type(comp())
    if "compression_level" in s:
        # w_bits, level, strategy, max_dict_bytes: RocksDB's defaults but the level
        opts.set_compression_options(-14, int(s["compression_level"]), 0, 0)
    start = int(s.get("compression_start_level", 0))
    if start > 0 and comp_name not in ("no", "none"):
        levels = [rd.DBCompressionType.none() if i < start else comp() for i in range(_NUM_LEVELS)]
        opts.set_compression_per_level(levels)


_STAT_LINE = re.compile(r"^(rocksdb\.[\w.\-]+)\s+(.*)$")


def parse_rocksdb_statistics(text: str | None) -> dict[str, Any]:
    """RocksDB's statistics dump -> ``{ticker: count}`` and ``{histogram: {"p50": .., "p99": ..,
    "count": .., "sum": ..}}``."""
    out: dict[str, Any] = {}
    for line in (text or "").splitlines():
        m = _STAT_LINE.match(line.strip())
        if not m:
            continue
        name, rest = m.groups()
        fields = dict(re.findall(r"(\w+) : ([\d.]+)", rest))
        if set(fields) == {"COUNT"}:
            out[name] = int(fields["COUNT"])
        elif fields:
            out[name] = {k.lower(): float(v) for k, v in fields.items()}
    return out


def _count(stats: Mapping[str, Any], name: str) -> int:
    v = stats.get(f"rocksdb.{name}", 0)
    return int(v["count"]) if isinstance(v, dict) else int(v)


def _delta(after: Mapping[str, Any], before: Mapping[str, Any], name: str) -> int:
    return _count(after, name) - _count(before, name)


def _file_read_bytes(stats: Mapping[str, Any]) -> int:
    """Bytes RocksDB read from its files: the per-level file read tickers count SST and blob
    file reads alike (``blobdb.blob.file.bytes.read`` is a subset of them)."""
    return sum(_count(stats, k) for k in ("last.level.read.bytes", "non.last.level.read.bytes"))


def _summarize_stats(
    after_put: Mapping[str, Any], after_get: Mapping[str, Any], props: Mapping[str, Any]
) -> dict[str, Any]:
    """The statistics a row carries: get-phase deltas for reads, whole-run counts for writes."""
    returned = _delta(after_get, after_put, "bytes.read")
    file_read = _file_read_bytes(after_get) - _file_read_bytes(after_put)
    stall_hist = after_get.get("rocksdb.db.write.stall")
    return {
        "block_cache_hit": _delta(after_get, after_put, "block.cache.hit"),
        "block_cache_miss": _delta(after_get, after_put, "block.cache.miss"),
        "bytes_returned": returned,
        "file_bytes_read": file_read,
        "blob_file_bytes_read": _delta(after_get, after_put, "blobdb.blob.file.bytes.read"),
        "bytes_read_per_byte_returned": file_read / returned if returned else None,
        "bytes_written": _count(after_get, "bytes.written"),
        "flush_write_bytes": _count(after_get, "flush.write.bytes"),
        "blob_file_bytes_written": _count(after_get, "blobdb.blob.file.bytes.written"),
        "wal_file_bytes": _count(after_get, "wal.bytes"),
        "stall_micros": _count(after_get, "stall.micros"),
        "write_stall_count": int(stall_hist["count"]) if isinstance(stall_hist, dict) else 0,
        **props,
    }


def _db_props(db: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for prop, key in (
        ("rocksdb.num-blob-files", "num_blob_files"),
        ("rocksdb.live-blob-file-size", "live_blob_file_bytes"),
        ("rocksdb.total-sst-files-size", "sst_file_bytes"),
        ("rocksdb.num-files-at-level0", "l0_files"),
    ):
        with contextlib.suppress(Exception):
            v = db.property_int_value(prop)
            if v is not None:
                out[key] = int(v)
    return out


def settle_compactions(db: Any, timeout_s: float = 60.0, poll_s: float = 0.05) -> float:
    """Wait until RocksDB runs and has pending no compaction (``rocksdb.num-running-compactions``,
    ``rocksdb.compaction-pending``), so cold reads do not overlap one; the seconds waited.

    Raises:
        TimeoutError: compactions still ran after *timeout_s*.
    """
    t0 = time.perf_counter()
    while True:
        busy = [
            db.property_int_value(p)
            for p in ("rocksdb.num-running-compactions", "rocksdb.compaction-pending")
        ]
        if not any(busy):
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError(f"RocksDB compactions still running after {timeout_s:g} s")
        time.sleep(poll_s)


def drop_page_cache(directory: str) -> int:
    """Sync every file under *directory* and drop its pages from the page cache; returns the bytes
    advised. Other files on the machine keep their cache."""
    advised = 0
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
                size = os.fstat(fd).st_size
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                advised += size
            finally:
                os.close(fd)
    return advised


def _timed_gets(db: Any, keys: list[bytes], value: bytes) -> list[float]:
    """Seconds of each get of *keys*; every value must have *value*'s length, the last one equal it."""
    get_t: list[float] = []
    last = None
    for k in keys:
        t0 = time.perf_counter()
        last = db.get(k)
        get_t.append(time.perf_counter() - t0)
        if last is None or len(last) != len(value):
            raise RuntimeError(f"RocksDB get {k!r}: {None if last is None else len(last)} bytes")
    if last != value:
        raise RuntimeError("RocksDB get: value differs from what was put")
    return get_t


def bench_rocksdb_one(
    profile: str,
    settings: Mapping[str, Any],
    medium: str,
    base_dir: str,
    value_bytes: int,
    n: int,
    flush_before_get: bool = True,
    cold_reads: bool = True,
) -> dict[str, Any]:
    """Put then get *n* values of *value_bytes* in a fresh RocksDB under *base_dir* opened with the
    Kvrocks *settings*; the database directory is removed afterwards.

    Puts go through the profile's write options (WAL or not). With *flush_before_get* the
    memtables are flushed (timed as ``flush_s``, outside the put throughput) so gets read the
    files (SST or blob) through the block cache / page cache, as reads of older chunks do. The
    row's stats count the ``.blob`` and ``.sst`` files the directory held before removal. With
    *cold_reads* the files are then synced (after any compaction it started has finished:
    :func:`settle_compactions`) and dropped from the page cache (``posix_fadvise``
    DONTNEED, this directory only), so a disk's gets read the disk; on tmpfs the page cache is the
    medium and stays.
    """
    import rocksdict as rd

    opts, wopts, ropts, unmapped = build_rocksdb_options(settings)
    d = tempfile.mkdtemp(prefix=f"kvstack-rocksdb-{profile}-", dir=base_dir)
    try:
        db = rd.Rdict(d, opts)
        try:
            db.set_write_options(wopts)
            db.set_read_options(ropts)
            value = bytes(_pattern(value_bytes, seed=value_bytes))
            keys = [b"kvstack:rocksdb:%d:%d" % (value_bytes, i) for i in range(n)]
            put_t: list[float] = []
            for k in keys:
                t0 = time.perf_counter()
                db.put(k, value)
                put_t.append(time.perf_counter() - t0)
            flush_s = settle_s = 0.0
            if flush_before_get:
                t0 = time.perf_counter()
                db.flush(True)
                flush_s = time.perf_counter() - t0
            settle_s = settle_compactions(db)
            if cold_reads:
                drop_page_cache(d)
            after_put = parse_rocksdb_statistics(opts.get_statistics())
            get_t = _timed_gets(db, keys, value)
            after_get = parse_rocksdb_statistics(opts.get_statistics())
            props = _db_props(db)
            files = sorted(os.listdir(d))
        finally:
            db.close()
            del db
    finally:
        shutil.rmtree(d, ignore_errors=True)
    stats = _summarize_stats(after_put, after_get, props)
    stats["blob_files_in_dir"] = sum(f.endswith(".blob") for f in files)
    stats["sst_files_in_dir"] = sum(f.endswith(".sst") for f in files)
    return {
        "profile": profile,
        "medium": medium,
        "dir": base_dir,
        "value_bytes": value_bytes,
        "n": n,
        "put_gb_per_s": _gbps(value_bytes * n, sum(put_t)),
        # what the writes cost once they are on the medium: the puts and the flush together
        "put_flush_gb_per_s": _gbps(value_bytes * n, sum(put_t) + flush_s),
        "get_gb_per_s": _gbps(value_bytes * n, sum(get_t)),
        "put_p50_ms": _latency_cols(put_t)["p50_ms"],
        "put_p99_ms": _latency_cols(put_t)["p99_ms"],
        "get_p50_ms": _latency_cols(get_t)["p50_ms"],
        "get_p99_ms": _latency_cols(get_t)["p99_ms"],
        "flush_s": flush_s,
        "compactions_settled_s": settle_s,
        "cold_reads": cold_reads,
        "stats": stats,
        "unmapped": unmapped,
    }


def run_rocksdb(
    profiles: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("upstream", "nvme_large_values", "dram"),
    sizes: Sequence[int] = ROCKSDB_SIZES,
    n: int = 32,
    media: Sequence[str] | Mapping[str, str] = ("disk", "tmpfs"),
    overrides: Mapping[str, Any] | None = None,
    profiles_path: Path | None = None,
) -> dict[str, Any]:
    """The RocksDB engine bench: every profile on every medium at every value size.

    *profiles*: Kvrocks profile names (resolved from profiles.yml with *overrides* merged over
    each) or a mapping name -> complete rocksdb.* settings. *media*: names from :data:`MEDIA`
    (``disk`` = /var/tmp, ``tmpfs`` = /dev/shm) or a mapping name -> base directory.
    Returns ``{"rocksdb": rows, "missing": notes}``; a medium whose directory is missing, or
    rocksdict not importable, becomes a note instead of rows.
    """
    try:
        import rocksdict  # noqa: F401
    except ImportError as e:
        return {"rocksdb": [], "missing": [f"RocksDB engine bench: rocksdict not importable ({e})"]}
    if isinstance(profiles, Mapping):
        resolved = {k: dict(v) for k, v in profiles.items()}
    else:
        resolved = {p: profile_options(p, overrides, profiles_path) for p in profiles}
    dirs = dict(media) if isinstance(media, Mapping) else {m: MEDIA[m] for m in media}
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    for medium, base in dirs.items():
        if not os.path.isdir(base):
            missing.append(f"RocksDB engine bench on {medium}: {base} does not exist")
            continue
        for name, settings in resolved.items():
            for size in sizes:
                progress(f"rocksdb: profile {name} on {medium} ({base}), {n} x {size} B")
                rows.append(bench_rocksdb_one(name, settings, medium, base, size, n))
    return {"rocksdb": rows, "missing": missing}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kvstack.rocksbench``: run the bench and print its result as JSON."""
    ap = argparse.ArgumentParser(description="RocksDB engine bench with the Kvrocks tuning profiles")
    ap.add_argument("--profiles", default="upstream,nvme_large_values,dram")
    ap.add_argument("--sizes", type=_sizes, default=list(ROCKSDB_SIZES), help="comma-separated bytes")
    ap.add_argument("--n", type=int, default=32, help="values per size")
    ap.add_argument("--media", default="disk,tmpfs")
    args = ap.parse_args(argv)
    out = run_rocksdb(
        [p for p in args.profiles.split(",") if p],
        args.sizes,
        args.n,
        [m for m in args.media.split(",") if m],
    )
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
