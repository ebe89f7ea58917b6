"""The issues' targets from what a run measured: each with its value, its confidence interval where
the run's samples allow one (:mod:`kvstack.intervals`), and the failures behind it. Whether one is
met is :func:`kvstack.intervals.verdict`'s call (the report's), never decided here.

Intervals: throughput ratios by a bootstrap over each configuration's repeats and conversations
(tokens per request-second, :func:`kvstack.intervals.busy_rate`, rescaled to the wall-clock
ratio); TTFT ratios by a bootstrap over the requests. The data path's ratio and the per-node hit
rates have no samples to resample: their rows carry no interval and so cannot be met."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kvstack import intervals as iv
from kvstack import loadgen, report, routing
from kvstack.bench.context import AMPLE, Cell
from kvstack.bench.probe import PROBE_TOKENS, phase_problems
from kvstack.results_schema import ResultsJson, RunEntry, Target
from kvstack.stats import RequestResult, latencies, read_jsonl
from kvstack_node import datapath

TARGETS = {
    "throughput_x": 3.0,
    "of_ceiling": 0.90,
    "overhead": 0.95,
    "kv_vs_local_hit_x": 1.25,
    "cold_vs_kv_x": 5.0,
    "l2_vs_raw": 0.70,
    #: a --vary value against its profile as the inventory has it: worth adopting only above 1
    "tuning": 1.0,
}


def _records(run_dir: Path | None, files: Sequence[str]) -> list[list[RequestResult]] | None:
    """Each file's requests (paths relative to *run_dir*); None when any is missing."""
    if run_dir is None or not files or not all((run_dir / f).is_file() for f in files):
        return None
    return [read_jsonl(run_dir / f) for f in files]


def _failures(*summaries: dict | None) -> int:
    return sum(int((s or {}).get("failed", 0)) + int((s or {}).get("unsent", 0)) for s in summaries)


def _row(name: str, value: float | None, interval: iv.Interval | None, **fields) -> Target:
    """A target row: the interval's own point value where there is one."""
    row: Target = {"name": name, "value": interval.value if interval else value, **fields}  # type: ignore[typeddict-item]
    if interval:
        row.update(lo=interval.lo, hi=interval.hi, conf=interval.conf, samples=[interval.n_a, interval.n_b])
    return row


def throughput_target(
    name: str,
    key: str,
    base: RunEntry | None,
    top: RunEntry | None,
    run_dir: Path | None,
    detail: str,
    seed: int = 0,
) -> Target:
    """tokens/s of *top* over *base* against ``TARGETS[key]``, with a bootstrap interval over
    their repeats and, within each, their conversations."""
    tps = [((r or {}).get("summary") or {}).get("total_tokens_per_s") for r in (top, base)]
    value = tps[0] / tps[1] if tps[0] and tps[1] else None
    work = []  # per configuration, per repeat: its conversations' work
    for r in (top, base):
        recs = _records(run_dir, [x["file"] for x in (r or {}).get("repeats", [])])
        work.append([iv.conversation_work(rs) for rs in recs] if recs else [])
    interval = iv.bootstrap_groups(work[0], work[1], iv.busy_rate, seed=seed) if value else None
    interval = iv.rescaled(interval, value)
    return _row(
        name,
        value,
        interval,
        target=TARGETS[key],
        op=">=",
        unit="x",
        detail=detail,
        failures=_failures((top or {}).get("summary"), (base or {}).get("summary")),
    )


def ceiling_targets(
    results: ResultsJson, runs: dict[tuple[str, str], RunEntry], load: str, run_dir: Path | None
) -> list[Target]:
    """At *load*: each LMCache profile's tokens/s as a fraction of the ceiling (``none`` with vLLM's
    cache holding the working set), and LMCache's overhead (the top profile with that cache over
    the ceiling); none when the ceiling was not planned."""
    ceiling = results.get("ceiling") or {}
    if not (results.get("plan") or {}).get("ceiling"):
        return []
    top = ceiling.get("top") or next((p for p in reversed(report.profiles_of(results)) if p != "none"), None)
    base = runs.get(("none" + AMPLE, load))
    detail = f"load {load}, vLLM cache {ceiling.get('kv_blocks', '?')} blocks"
    out = [
        throughput_target(
            f"tokens/s {p} vs the ceiling", "of_ceiling", base, runs.get((p, load)), run_dir, detail
        )
        for p in report.profiles_of(results)
        if p != "none" and AMPLE not in p
    ]
    if top:
        out.append(
            throughput_target(
                f"LMCache overhead: tokens/s {top} vs none, both with ample vLLM cache",
                "overhead",
                base,
                runs.get((top + AMPLE, load)),
                run_dir,
                detail,
            )
        )
    return out


def tuning_targets(
    results: ResultsJson, runs: dict[tuple[str, str], RunEntry], load: str, run_dir: Path | None
) -> list[Target]:
    """At *load*: each ``--vary`` value's cell against its profile as the inventory has it (what
    the change bought; met only when its interval clears 1, i.e. a measured gain)."""
    o = results.get("options") or {}
    return [
        throughput_target(
            f"tuning: tokens/s {cell.label} vs {p}",
            "tuning",
            runs.get((p, load)),
            runs.get((cell.label, load)),
            run_dir,
            f"load {load}, one variable changed",
        )
        for p in o.get("profiles") or []
        if p != "none"
        for k, vs in (o.get("vary") or {}).items()
        for cell in (Cell(p, tweak=(k, str(v))) for v in vs)
    ]


def probe_targets(results: ResultsJson) -> list[Target]:
    """The TTFT probe's two ratios; a phase whose tokens did not come from where it claims counts
    as a failure (:func:`kvstack.bench.probe.phase_problems`)."""
    probe = results.get("ttft_probe") or {}
    rows = probe.get("ttft_s") or {}
    cold, local, kv = (rows.get(k) or [] for k in ("cold", "vLLM prefix-cache hit", "KV-server tier hit"))
    problems = phase_problems(probe) if probe else []
    failures = int(probe.get("failed", 0)) + len(problems)
    detail = f"{PROBE_TOKENS}-token context" + (f"; {'; '.join(problems)}" if problems else "")
    out = []
    for name, a, b, key, op in (
        ("TTFT P50 KV-server tier vs vLLM prefix-cache hit", kv, local, "kv_vs_local_hit_x", "<="),
        ("TTFT P50 cold vs KV-server tier", cold, kv, "cold_vs_kv_x", ">="),
    ):
        pa, pb = iv.p(50)(a), iv.p(50)(b)
        interval = iv.bootstrap_ratio(a, b, iv.p(50), seed=len(out))
        value = pa / pb if pa and pb else None
        out.append(
            _row(
                name, value, interval, target=TARGETS[key], op=op, unit="x", detail=detail, failures=failures
            )
        )
    return out


def datapath_target(results: ResultsJson) -> Target:
    """LMCache's L2 retrieve over the raw client at the value size nearest one chunk (no interval)."""
    chunk = results.get("chunk_bytes")
    ratios = datapath.l2_vs_raw(results.get("kv_datapath") or [])
    size = min(ratios, key=lambda s: abs(s - (chunk or 0))) if ratios else None
    return _row(
        "LMCache L2 retrieve vs raw RESP GET",
        ratios.get(size) if size else None,
        None,
        target=TARGETS["l2_vs_raw"],
        op=">=",
        unit="x",
        detail=(
            f"value {report.fmt_bytes(size)} (one LMCache chunk of this model); the raw client with "
            "LMCache's connections and batching, pipelined"
            if size
            else ""
        ),
    )


def _routing_p95(results: ResultsJson, run_dir: Path | None, tier: str) -> Target:
    """TTFT P95 round-robin over cache-aware on 2 nodes with the serving nodes on *tier* (""
    the inventory's profile), with a bootstrap interval over the two runs' passes
    (``--routing-passes``), then the requests within each."""
    rt = results.get("routing") or {}
    by = {r["config"]: r for r in rt.get("runs", [])}
    rr = by.get(routing.labelled("2 nodes round_robin", tier))
    ca = by.get(routing.labelled("2 nodes cache_aware", tier))
    recs = _records(run_dir, [r["file"] for r in (rr, ca) if r and r.get("file")]) if rr and ca else None
    ttfts = [[latencies(g, "ttft") for g in loadgen.split_passes(rs)] for rs in recs or []]
    interval = iv.bootstrap_groups(ttfts[0], ttfts[1], iv.p(95), seed=2) if len(ttfts) == 2 else None
    fig = rt.get("target_without_tier" if tier else "target") or {}
    return _row(
        f"TTFT P95 round-robin vs cache-aware routing (2 nodes{', ' + tier if tier else ''})",
        fig.get("measured"),
        interval,
        target=routing.TARGET_P95_X,
        op=">=",
        unit="x",
        detail="multi-round QA through the router"
        + (", every serving node on profile none" if tier else ", the inventory's tier profile"),
        failures=_failures(*((r or {}).get("summary") for r in (rr, ca))),
    )


def routing_targets(results: ResultsJson, run_dir: Path | None) -> list[Target]:
    """TTFT P95 round-robin over cache-aware on 2 nodes, with the shared tier and (when it ran)
    without it, and the share of nodes whose hit rate cache-aware routing raised (no interval)."""
    rt = results.get("routing") or {}
    higher = (rt.get("target") or {}).get("hit_rate_higher_on") or {}
    out = [_routing_p95(results, run_dir, "")]
    if rt.get("target_without_tier"):
        out.append(_routing_p95(results, run_dir, routing.NO_TIER))
    out.append(
        _row(
            "share of serving nodes with a higher hit rate under cache-aware routing",
            sum(higher.values()) / len(higher) if higher else None,
            None,
            target=1.0,
            op=">=",
            unit="",
            detail=", ".join(f"{n}: {'yes' if v else 'no'}" for n, v in higher.items()),
            failures=out[0].get("failures", 0),
        )
    )
    return out


def targets(results: ResultsJson, ws_ratio: float | None, run_dir: Path | None = None) -> list[Target]:
    """The issue's targets from what this run measured (value None where not measured); *run_dir*
    holds the runs' requests, which the intervals resample."""
    out: list[Target] = []
    runs = report.run_index(results)
    for load in report.loads_of(results):
        detail = f"{results.get('workload', {}).get('name', '')}, load {load}, working set " + (
            f"{ws_ratio:.1f}x vLLM's KV space" if ws_ratio else "?"
        )
        out.append(
            throughput_target(
                "tokens/s dram+kv vs none",
                "throughput_x",
                runs.get(("none", load)),
                runs.get(("dram+kv", load)),
                run_dir,
                detail,
            )
        )
        out += ceiling_targets(results, runs, load, run_dir)
        out += tuning_targets(results, runs, load, run_dir)
    return [*out, *probe_targets(results), datapath_target(results), *routing_targets(results, run_dir)]
