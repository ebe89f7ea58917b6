"""The storage steps: the KV data path on a serving node against the KV server
(:mod:`kvstack_node.datapath`) and the RocksDB engine with each Kvrocks tuning profile on disk and tmpfs
(:mod:`kvstack.rocksbench`)."""

from __future__ import annotations

from typing import Any

from kvstack import rocksbench, stack
from kvstack.bench.context import Context
from kvstack.bench.options import BenchOptions
from kvstack.log import progress


class DatapathStep:
    """KV-cache chunks moved to and from the KV server: raw RESP against LMCache's own L2 client."""

    name = "KV data path"
    optional = True

    def enabled(self, o: BenchOptions) -> bool:
        return o.datapath

    def planned(self, ctx: Context) -> dict[str, Any]:
        return {"kv_datapath": ctx.o.datapath}

    def run(self, ctx: Context) -> None:
        # as many L2 connections as the node's LMCache has (or as --set lmcache_kv_workers says)
        lm = ctx.ep.lmcache(ctx.node)
        workers = int(ctx.o.extra_vars.get("lmcache_kv_workers") or lm.get("kv_workers") or 2)
        progress(f"KV data-path bench on {ctx.node} ({workers} L2 workers)")
        sizes, n = tuple(ctx.o.preset("datapath_sizes")), ctx.o.preset("datapath_n")
        dp = stack.run_datapath(ctx.ep, ctx.node, sizes, n, workers)
        ctx.res.note_missing(*dp.get("missing", []))
        ctx.res.put("kv_datapath", dp.get("kv_datapath", []))


class RocksdbStep:
    """RocksDB with each Kvrocks tuning profile, on the controller's disk and on tmpfs."""

    name = "RocksDB engine bench"
    optional = True

    def enabled(self, o: BenchOptions) -> bool:
        return o.rocksdb

    def planned(self, ctx: Context) -> dict[str, Any]:
        return {}

    def run(self, ctx: Context) -> None:
        progress("RocksDB engine bench (Kvrocks tuning profiles, disk and tmpfs)")
        rd = rocksbench.run_rocksdb(
            sizes=tuple(ctx.o.preset("rocksdb_sizes")),
            n=ctx.o.preset("rocksdb_n"),
            media={"disk": str(ctx.o.rocksdb_dir), "tmpfs": "/dev/shm"},
        )
        ctx.res.note_missing(*rd.get("missing", []))
        ctx.res.put("rocksdb", rd.get("rocksdb", []))
