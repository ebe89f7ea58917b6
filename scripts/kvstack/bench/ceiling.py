"""The ceiling and LMCache's overhead: the same workload with vLLM's own cache sized to hold the
whole working set (``vllm_num_kv_blocks``), once without LMCache (``none``: what a big enough HBM
would give, the line every tier profile is measured against) and once with the matrix's last
LMCache profile (its cost when no tier is needed: against the first, LMCache's overhead).

Optional: a node that cannot hold that many blocks (HBM too small) fails the switch; the run goes
on and the report says the ceiling is missing."""

from __future__ import annotations

import math
from typing import Any

from kvstack.bench.context import Cell, Context
from kvstack.bench.matrix import measure_cell
from kvstack.bench.options import BenchOptions

#: the ceiling's vLLM cache: this many times the working set, in whole blocks
HEADROOM = 1.25


def top_profile(o: BenchOptions) -> str | None:
    """The matrix's last profile that uses LMCache (whose overhead is measured), if any."""
    return next((p for p in reversed(o.profiles) if p != "none"), None)


def ample_blocks(working_set_tokens: int, block_size: int, kv_tokens: int) -> int:
    """vLLM blocks that hold the working set with :data:`HEADROOM` (never fewer than it has)."""
    need = math.ceil(working_set_tokens * HEADROOM / block_size)
    return max(need, math.ceil(kv_tokens / block_size))


def ceiling_cells(o: BenchOptions, blocks: int) -> list[Cell]:
    """``none`` and the top LMCache profile, each with *blocks* of vLLM cache."""
    top = top_profile(o)
    return [Cell("none", kv_blocks=blocks)] + ([Cell(top, kv_blocks=blocks)] if top else [])


class CeilingStep:
    """The ceiling's cells after the matrix, at every load level (each repeat)."""

    name = "ceiling"
    optional = True

    def enabled(self, o: BenchOptions) -> bool:
        return o.ceiling and o.matrix

    def planned(self, ctx: Context) -> dict[str, Any]:
        on = self.enabled(ctx.o)
        return {"ceiling": [c.label for c in ceiling_cells(ctx.o, 1)] if on else []}

    def run(self, ctx: Context) -> None:
        w = ctx.res.data["workload"]
        blocks = ample_blocks(ctx.sample.working_set_tokens, int(w["block_size"]), ctx.kv_tokens)
        cs = ceiling_cells(ctx.o, blocks)
        ctx.res.put(
            "ceiling",
            {"kv_blocks": blocks, "tokens": blocks * int(w["block_size"]), "top": top_profile(ctx.o)},
        )
        plan = [(rep, c) for rep in range(ctx.o.repeats) for c in cs]
        for i, (rep, cell) in enumerate(plan):
            measure_cell(ctx, cell, rep, i, len(plan))
