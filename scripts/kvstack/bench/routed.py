"""The steps that send load through what users call: the router (:mod:`kvstack.routing`: 1 vs 2
nodes, round-robin vs cache-aware) and NVIDIA Dynamo's frontend (:mod:`kvstack.dynamo_bench`,
``--dynamo``). Both run with the serving nodes on the inventory's tier profile; routing then runs
again with every serving node on profile ``none`` (vLLM's own cache only:
``--no-routing-without-tier`` skips it), so the report answers what cache-aware routing buys with
and without the shared KV tier."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvstack import dynamo_bench, loadgen, routing
from kvstack.bench import workload
from kvstack.bench.context import Cell, Context, switch
from kvstack.bench.options import BenchOptions, Load
from kvstack.results_schema import Dynamo, Routing


class RoutedStep:
    """One of the two: *key* names its results.json key, *runner* its module's run function."""

    optional = True

    def __init__(self, key: str, runner: Callable[..., Routing | Dynamo], with_api_key: bool):
        self.name = self.key = key
        self.runner, self.with_api_key = runner, with_api_key

    def enabled(self, o: BenchOptions) -> bool:
        return bool(getattr(o, self.key))

    def planned(self, ctx: Context) -> dict[str, Any]:
        return {}

    def run(self, ctx: Context) -> None:
        ctx.restore()
        o, users = ctx.o, int(Load.parse(ctx.o.preset("routing_load")).value)
        api_key = (ctx.vllm.get("api_key") or None) if self.with_api_key else None

        def lc_for(url: str, model: str, i: int) -> loadgen.LoadConfig:
            seed = ctx.seed(self.key, "load", i)
            return loadgen.LoadConfig(
                url,
                model,
                concurrency=users,
                interleave=True,
                seed=seed,
                max_seconds=o.max_seconds,
                api_key=api_key,
            )

        def conversations_for(i: int) -> list[list]:
            ratio = o.preset("routing_kv_ratio")
            return [
                workload.build_workload(
                    o, ctx.tok, ctx.kv_tokens, ctx.seed(self.key, "text", i, k), ratio
                ).conversations
                for k in range(o.preset("routing_passes"))
            ]

        args = (o.inventory, ctx.ep, conversations_for, lc_for, ctx.res.dir / "runs", ctx.log, ctx.slo)
        result = self.runner(*args, lambda r: ctx.res.put(self.key, r))
        if self.key == "routing" and o.routing_without_tier:
            result = self._without_tier(ctx, args, result)
        ctx.res.note_missing(*result["missing"])
        ctx.res.put(self.key, result)

    def _without_tier(self, ctx: Context, args: tuple, result: Any) -> Any:
        """The routing configurations again with every serving node on profile none, then the
        nodes back on the inventory's profile."""
        nodes = list(ctx.ep.serving)
        try:
            switch(ctx.o, nodes, Cell("none"), ctx.log)
            return self.runner(*args, lambda r: ctx.res.put(self.key, r), tier=routing.NO_TIER, into=result)
        finally:
            switch(ctx.o, nodes, None, ctx.log)


def routing_step() -> RoutedStep:
    """Through the router (the vLLM API key, when set, is the router's too)."""
    return RoutedStep("routing", routing.run_routing, with_api_key=True)


def dynamo_step() -> RoutedStep:
    """Through Dynamo's frontend (which asks for no API key)."""
    return RoutedStep("dynamo", dynamo_bench.run_dynamo, with_api_key=False)
