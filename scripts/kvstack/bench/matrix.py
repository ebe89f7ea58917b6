"""The matrix: tier profiles (x LMCache chunk sizes, optional) x load levels, repeated. Each cell
switches the serving node through ``site.yml``, sends warm-up requests that are not measured,
empties vLLM's own prefix cache, then runs each load level with counters read around it. The
profile order is shuffled per repeat (seeded), so drift does not favour one profile."""

from __future__ import annotations

import random
from typing import Any

from kvstack import loadgen, stack
from kvstack.bench import workload
from kvstack.bench.context import Cell, Context
from kvstack.bench.options import BenchOptions, Load
from kvstack.bench.probe import probe_here
from kvstack.log import progress
from kvstack.measure import measured_run


def cells(o: BenchOptions) -> list[Cell]:
    """Profiles x chunk sizes (``none`` does not use LMCache: one cell), then each LMCache
    profile once per ``--vary`` value (one variable at a time, the rest as the inventory has them)."""
    out = []
    for p in o.profiles:
        if o.chunk_sizes and p != "none":
            out += [Cell(p, c) for c in o.chunk_sizes]
        else:
            out.append(Cell(p))
        if p != "none":
            out += [Cell(p, tweak=(k, v)) for k, vs in o.vary.items() for v in vs]
    return out


def schedule(cs: list[Cell], repeats: int, seed: int) -> list[tuple[int, Cell]]:
    """Per repeat a seeded shuffle of the cells; consecutive repeats never start with the cell the
    previous one ended with (no free ride on a warm stack)."""
    rng = random.Random(seed)
    out: list[tuple[int, Cell]] = []
    for r in range(repeats):
        order = list(cs)
        rng.shuffle(order)
        if out and len(order) > 1 and order[0] == out[-1][1]:
            order.append(order.pop(0))
        out += [(r, c) for c in order]
    return out


def load_config(ctx: Context, load: Load, seed: int) -> loadgen.LoadConfig:
    """The load generator's settings of one measured run at *load*."""
    return loadgen.LoadConfig(
        ctx.vllm["url"],
        ctx.vllm["model"],
        mode=load.mode,
        concurrency=int(load.value) if load.mode == "closed" else 1,
        qps=load.value if load.mode == "open" else None,
        interleave=True,
        seed=seed,
        max_seconds=ctx.o.max_seconds,
        api_key=ctx.vllm.get("api_key") or None,
    )


def measure_cell(ctx: Context, cell: Cell, rep: int, i: int, of: int) -> None:
    """Cell *i* of *of*: switch the node to *cell*, warm up, then one measured run per load level."""
    ctx.ready(cell, cell.label, rep)
    sources, kinds = stack.metric_sources(ctx.ep, [ctx.node], lmcache=cell.profile != "none")
    for j, load in enumerate(ctx.loads):
        label = f"[{i * len(ctx.loads) + j + 1}/{of * len(ctx.loads)}] {cell.label} {load.label}"
        measure_one(ctx, cell, rep, load, label, sources, kinds, ctx.seed("run", cell.label, rep, j))


def measure_one(
    ctx: Context, cell: Cell, rep: int, load: Load, label: str, sources, kinds, seed: int
) -> None:
    """One measured run of *cell* at *load*, stored in results.json."""
    wl = workload.build_workload(ctx.o, ctx.tok, ctx.kv_tokens, seed)
    if not stack.reset_prefix_cache(ctx.vllm):
        ctx.res.note_missing(f"{cell.label}: vLLM's prefix cache not emptied before a run (reset refused)")
    lc = load_config(ctx, load, seed)
    mr = measured_run(
        wl.conversations, lc, sources, loadgen.log_progress(label, every=max(10, wl.requests // 10))
    )
    ctx.res.note_missing(*(f"counters: {e}" for e in mr.errors))
    entry = ctx.res.add_run(
        cell.label,
        load.label,
        rep,
        mr.out.records,
        mr.out.wall_time_s,
        {**mr.out.meta(), "load": lc.to_dict()},
        mr.deltas,
        kinds,
        mr.counters,
        ctx.slo,
    )
    s = entry["summary"]
    progress(
        f"{label}: {s['total_tokens_per_s']:.0f} tok/s, "
        f"TTFT P50 {1000 * (s['ttft']['p50'] or 0):.0f} ms, failed {s['failed']}, unsent {s['unsent']}"
    )


class MatrixStep:
    """Every cell of the schedule at every load level (a failure stops the run)."""

    name = "matrix"
    optional = False

    def enabled(self, o: BenchOptions) -> bool:
        return o.matrix

    def planned(self, ctx: Context) -> dict[str, Any]:
        cs = cells(ctx.o)
        on = ctx.o.matrix
        return {
            "profiles": [c.label for c in cs] if on else [],
            "loads": [x.label for x in ctx.loads] if on else [],
            "order": [f"r{r}:{c.label}" for r, c in schedule(cs, ctx.o.repeats, ctx.o.seed)] if on else [],
        }

    def run(self, ctx: Context) -> None:
        plan = schedule(cells(ctx.o), ctx.o.repeats, ctx.o.seed)
        w = ctx.res.data["workload"]
        progress(
            f"workload {w['name']}: {ctx.sample.requests} requests per run, working set "
            f"{ctx.sample.working_set_tokens:,} tokens = {w['kv_space_ratio']:.1f}x vLLM's KV space"
        )
        for i, (rep, cell) in enumerate(plan):
            measure_cell(ctx, cell, rep, i, len(plan))
            if ctx.o.probe and cell.profile == "kv" and cell.label not in ctx.res.data["ttft_probes"]:
                with ctx.optional(f"TTFT probe ({cell.label})"):
                    probe_here(ctx, cell.label)
