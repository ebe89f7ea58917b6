"""One bench run: validate the options, build the context, run each enabled step in order, then
the targets, the report and the serving node back on the inventory's configuration."""

from __future__ import annotations

from pathlib import Path

from kvstack import dynamo_bench, report, stack
from kvstack.bench.ceiling import CeilingStep
from kvstack.bench.context import Context
from kvstack.bench.crosscheck import CrossCheckStep
from kvstack.bench.engines import DatapathStep, RocksdbStep
from kvstack.bench.matrix import MatrixStep
from kvstack.bench.options import BenchOptions, validate
from kvstack.bench.probe import ProbeStep
from kvstack.bench.results import now
from kvstack.bench.routed import dynamo_step, routing_step
from kvstack.bench.step import Step
from kvstack.bench.targets import targets
from kvstack.log import brief, progress

#: in the order they run
STEPS: tuple[Step, ...] = (
    MatrixStep(),
    CeilingStep(),
    ProbeStep(),
    DatapathStep(),
    RocksdbStep(),
    CrossCheckStep(),
    routing_step(),
    dynamo_step(),
)


def run_bench(o: BenchOptions) -> Path:
    """Run the bench per *o*; returns the results directory (also on failure, with what it has)."""
    loads = validate(o)
    ep = stack.fetch_endpoints(o.inventory)
    if o.dynamo:
        dynamo_bench.require(ep)
    ctx = Context.open(o, loads, ep)
    plan: dict = {"node": ctx.node, "content_salt": ctx.salt, "extra_vars": o.extra_vars}
    for step in STEPS:
        plan.update(step.planned(ctx))
    ctx.res.put("plan", plan)
    try:
        ctx.prepare()
        for step in STEPS:
            if not step.enabled(o):
                continue
            if step.optional:
                with ctx.optional(step.name):
                    step.run(ctx)
            else:
                step.run(ctx)
        ctx.res.update(interrupted=False)
    except BaseException as e:
        ctx.res.update(error=brief(e))
        ctx.res.note_missing(f"run stopped early: {brief(e)}")
        raise
    finally:
        finish(ctx)
    return ctx.res.dir


def finish(ctx: Context) -> None:
    """Targets, ``finished_at``, the report and the inventory's configuration back; each part
    goes on when an earlier one failed."""
    res = ctx.res
    res.update(
        targets=targets(res.data, res.data.get("workload", {}).get("kv_space_ratio"), res.dir),
        finished_at=now(),
    )
    res.save()
    try:
        report.write_report(res.dir)
        print(report.summary_table(res.data))
    except Exception as e:  # the raw results are saved; say why the report is not
        progress(f"report not written: {type(e).__name__}: {e} (results.json is complete)")
    progress(f"report: {res.dir / 'report.md'}")
    try:
        ctx.restore()
    except BaseException as e:
        progress(
            f"could not restore the inventory's tier profile ({e}); run: fab provision --tags lmcache,vllm"
        )
