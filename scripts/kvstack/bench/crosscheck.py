"""The independent cross-check: AIPerf replays the requests our client sent, against the same vLLM in
profile ``none``, and the report sets its TTFT and TPOT P50/P95 beside ours, with vLLM's own
(server-side) mean TTFT of both runs.

Both runs start from an emptied vLLM prefix cache on a node without LMCache, so they meet the same
cache state; our client runs the conversations closed-loop, each user one conversation to its
end, which is how AIPerf runs sessions (``--concurrency`` sessions at a time), so both offer the
same load. They agree when every compared figure is within :data:`AGREE` of ours, or when the
bootstrap interval of AIPerf's figure over ours (both runs' requests resampled) reaches into that
band ("within noise": one run each cannot tell them apart); where they do not, the report shows
by how much (and a run with failures says so), with what each run cost
outside the server: each client's CPU seconds (this process for ours, the AIPerf process tree
for theirs) over its wall time, and vLLM's prefix-cache hit rate in each run. On the lab the
clients share two cores with vLLM, so a heavier client slows the server it measures. Our
requests are kept in ``runs/crosscheck__ours.jsonl`` and AIPerf's in
``aiperf/profile_export.jsonl``."""

from __future__ import annotations

import resource
import shutil
import time
from pathlib import Path
from typing import Any

from kvstack import aiperf, loadgen, stack
from kvstack import intervals as iv
from kvstack import metrics as m
from kvstack.bench import workload
from kvstack.bench.context import Cell, Context
from kvstack.bench.options import BenchOptions
from kvstack.log import progress
from kvstack.stats import latencies, summarize, write_jsonl

#: AIPerf's figure / ours within 1 +- this
AGREE = 0.15


def server_ttft(deltas: dict[str, dict[str, float]]) -> float | None:
    """vLLM's own mean TTFT over a run (its histogram's sum / count deltas), in seconds."""
    vd = deltas.get("vllm", {})
    n = m.total(vd, "vllm:time_to_first_token_seconds_count")
    return m.total(vd, "vllm:time_to_first_token_seconds_sum") / n if n else None


def server_ttft_quantiles(deltas: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """vLLM's own TTFT P50 and P95 over a run, estimated in its histogram's buckets (as
    Prometheus' ``histogram_quantile``: only as fine as the buckets), in seconds."""
    vd = deltas.get("vllm", {})
    return {
        stat: m.histogram_quantile(vd, "vllm:time_to_first_token_seconds", float(stat[1:]) / 100)
        for stat in aiperf.STATS
    }


def agreement(ratio: float | None, interval: iv.Interval | None) -> str:
    """``yes``: AIPerf's figure within :data:`AGREE` of ours; ``within noise``: not, but the
    ratio's interval reaches into that band (the runs cannot tell them apart); ``no``: the whole
    interval is outside it (or there is no figure to compare)."""
    if ratio is None:
        return "no"
    if abs(ratio - 1) <= AGREE:
        return "yes"
    if interval and interval.lo <= 1 + AGREE and interval.hi >= 1 - AGREE:
        return "within noise"
    return "no"


def compare(
    ours: dict[str, Any], theirs: dict[str, Any], samples: dict[str, dict[str, list[float]]] | None = None
) -> list[dict[str, Any]]:
    """Per compared figure (:data:`kvstack.aiperf.METRICS` x :data:`~kvstack.aiperf.STATS`): both
    values in seconds, AIPerf's over ours, with a bootstrap interval over both runs' requests
    where *samples* has them (``{"ours"|"aiperf": {"ttft"|"tpot": [s, ...]}}``), and
    :func:`agreement`'s call."""
    rows = []
    for metric in aiperf.METRICS.values():
        for stat in aiperf.STATS:
            a, b = ours[metric][stat], theirs[metric][stat]
            ratio = b / a if a and b is not None else None
            interval = None
            if samples and ratio is not None:
                interval = iv.bootstrap_ratio(
                    samples["aiperf"][metric], samples["ours"][metric], iv.p(float(stat[1:]))
                )
            rows.append(
                {
                    "figure": f"{metric.upper()} {stat.upper()}",
                    "ours_s": a,
                    "aiperf_s": b,
                    "ratio": ratio,
                    "lo": interval.lo if interval else None,
                    "hi": interval.hi if interval else None,
                    "agree": agreement(ratio, interval),
                }
            )
    return rows


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its waited-for children so far."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _measured(ctx: Context, sources: list[m.Source], run: Any) -> tuple[Any, dict[str, Any]]:
    """*run()* with vLLM's prefix cache emptied before, and what it cost: the counters' deltas
    (``deltas``), wall seconds and client CPU seconds (``wall_s``, ``cpu_s``)."""
    if not stack.reset_prefix_cache(ctx.vllm):
        raise RuntimeError("vLLM refused to empty its prefix cache before a cross-check run")
    before = m.snapshot_all(sources)
    t0, c0 = time.monotonic(), _cpu_s()
    out = run()
    cost = {"wall_s": time.monotonic() - t0, "cpu_s": _cpu_s() - c0}
    deltas, _ = m.deltas_between(before, m.snapshot_all(sources))
    return out, {**cost, "deltas": deltas}


def _costs(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Both runs' server-side mean TTFT, prefix-cache hit rate, client CPU and wall seconds."""
    both = {"ours": ours, "aiperf": theirs}
    return {
        "server_ttft_mean_s": {k: server_ttft(v["deltas"]) for k, v in both.items()},
        "server_ttft_s": {k: server_ttft_quantiles(v["deltas"]) for k, v in both.items()},
        "prefix_hit_rate": {
            k: m.summarize(v["deltas"], {"vllm": "vllm"}).get("vLLM prefix-cache hit rate")
            for k, v in both.items()
        },
        "client_cpu_s": {k: v["cpu_s"] for k, v in both.items()},
        "wall_s": {k: v["wall_s"] for k, v in both.items()},
    }


def _tokenizer_dir(ctx: Context) -> Path:
    """The served model's tokenizer files, fetched from the node into the results directory."""
    tdir = ctx.res.dir / "tokenizer"
    tdir.mkdir(exist_ok=True)
    with stack.connection(ctx.ep, ctx.node) as c:
        for name in aiperf.TOKENIZER_FILES:
            c.get(f"{ctx.vllm['model_path']}/{name}", str(tdir / name))
        for name in aiperf.TOKENIZER_FILES_OPTIONAL:
            try:
                c.get(f"{ctx.vllm['model_path']}/{name}", str(tdir / name))
            except OSError:  # absent on the node: a failed get leaves an empty file behind
                (tdir / name).unlink(missing_ok=True)
    return tdir


class CrossCheckStep:
    """Our client, then AIPerf, on the same requests (profile ``none``)."""

    name = "AIPerf cross-check"
    optional = True

    def enabled(self, o: BenchOptions) -> bool:
        return o.crosscheck

    def planned(self, ctx: Context) -> dict[str, Any]:
        return {"crosscheck": ctx.o.crosscheck}

    def run(self, ctx: Context) -> None:
        exe = aiperf.ensure(log=ctx.res.dir / "aiperf.log")
        ctx.ready(Cell("none"), "crosscheck")
        users = max(int(x.value) for x in ctx.loads if x.mode == "closed") if ctx.loads else 4
        wl = workload.build_workload(ctx.o, ctx.tok, ctx.kv_tokens, ctx.seed("crosscheck"))
        sources = [stack.vllm_source(ctx.vllm, "vllm")]
        lc = loadgen.LoadConfig(
            ctx.vllm["url"],
            ctx.vllm["model"],
            concurrency=users,
            api_key=ctx.vllm.get("api_key") or None,
            keep_prompts=True,
        )
        ours, c_ours = _measured(ctx, sources, lambda: loadgen.run(wl.conversations, lc))
        (ctx.res.dir / "runs").mkdir(exist_ok=True)
        write_jsonl(ours.records, ctx.res.dir / "runs" / "crosscheck__ours.jsonl")
        s = summarize(ours.records, wall_time_s=ours.wall_time_s, unsent=ours.turns_unsent).to_dict()
        data = ctx.res.dir / "aiperf-dataset.jsonl"
        data.write_text(aiperf.dataset(ours.sent, {"ignore_eos": True, "temperature": 0}))
        art = ctx.res.dir / "aiperf"
        shutil.rmtree(art, ignore_errors=True)
        cmd = aiperf.command(
            exe,
            url=ctx.vllm["url"],
            model=ctx.vllm["model"],
            tokenizer=_tokenizer_dir(ctx),
            concurrency=users,
            sessions=len(wl.conversations),
            input_file=data,
            artifact_dir=art,
            api_key=ctx.vllm.get("api_key") or None,
        )
        progress(f"AIPerf {aiperf.VERSION}: replaying {len(ours.sent)} requests, {users} sessions at a time")
        _, c_theirs = _measured(ctx, sources, lambda: aiperf.run(cmd, ctx.res.dir / "aiperf.log", 1800))
        theirs = aiperf.read_summary(art)
        ctx.res.put(
            "crosscheck",
            {
                "profile": "none",
                "users": users,
                "requests": {"ours": s["requests"], "aiperf": theirs["requests"]},
                "failed": {"ours": s["failed"] + s["unsent"], "aiperf": theirs["errors"]},
                "aiperf_version": theirs["version"],
                "rows": compare(
                    s,
                    theirs,
                    {
                        "ours": {k: latencies(ours.records, k) for k in aiperf.METRICS.values()},
                        "aiperf": aiperf.read_requests(art),
                    },
                ),
                "client_ttft_mean_s": s["ttft"]["mean"],
                **_costs(c_ours, c_theirs),
            },
        )
