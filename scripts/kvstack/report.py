"""The bench report: ``results.json`` of a run -> ``report.md`` (Jinja2) and PNG plots (matplotlib).

``results.json``'s keys and rows are typed in :mod:`kvstack.results_schema`; :func:`write_report`
reads the file through its :func:`~kvstack.results_schema.load` (the required keys checked, the
optional ones an interrupted run lacks tolerated). The functions below take such a dict.

Planned profile x load cells without a run, a planned KV data-path bench without rows, and the
``missing`` notes are listed in the report as missing, so an interrupted run still renders what it
measured. Profiles are ordered as planned (default: ``none``, ``dram``, ``kv``, ``dram+kv``); ratios
are against ``none`` at the same load.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from kvstack import REPO, intervals
from kvstack import results_schema as schema
from kvstack.measure import safe_name
from kvstack.results_schema import ResultsJson, RunEntry, Target

PROFILES = ("none", "dram", "kv", "dram+kv")
BASELINE = "none"
TEMPLATE = "report.md.j2"
TEMPLATES_DIR = REPO / "templates"
PERCENTILES = ("p50", "p95", "p99")
#: where a probe request's prompt tokens came from, as counted by vLLM and LMCache
PROBE_SOURCES = ("local_cache_hit", "external_kv_transfer", "LMCache L1 hit", "LMCache L2 hit")


def fmt(x: float | None, digits: int = 1) -> str:
    """A table cell: fixed decimals with thousands separators, ``-`` for missing values."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def fmt_bytes(n: int | None) -> str:
    """``262144`` -> ``256 KiB``; ``None`` -> ``-``."""
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            v = n / size
            return f"{v:g} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1000


def _get(d: Mapping[str, Any], *path: str) -> Any:
    """``d[p0][p1]...`` or None where any key is absent."""
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def profiles_of(results: ResultsJson) -> list[str]:
    """Planned profiles, then any other profile that ran, in a stable order."""
    planned = list(_get(results, "plan", "profiles") or [])
    ran = [r["profile"] for r in results.get("runs", [])]
    known = planned or [p for p in PROFILES if p in ran]
    return known + [p for p in dict.fromkeys(ran) if p not in known]


def loads_of(results: ResultsJson) -> list[str]:
    """Planned load levels, then any other load that ran."""
    planned = [str(x) for x in _get(results, "plan", "loads") or []]
    ran = [str(r["load"]) for r in results.get("runs", [])]
    return planned + [x for x in dict.fromkeys(ran) if x not in planned]


def run_index(results: ResultsJson) -> dict[tuple[str, str], RunEntry]:
    """(profile, load) -> run (the last one when repeated)."""
    return {(r["profile"], str(r["load"])): r for r in results.get("runs", [])}


def missing_parts(results: ResultsJson) -> list[str]:
    """What a complete run would have and this one lacks."""
    runs = run_index(results)
    out = [
        f"profile `{p}` at load `{load}`: not run"
        for p in _get(results, "plan", "profiles") or []
        for load in _get(results, "plan", "loads") or []
        if (p, str(load)) not in runs
    ]
    if _get(results, "plan", "probe") and not results.get("ttft_probe"):
        out.append("TTFT probe: not run")
    if _get(results, "plan", "kv_datapath") and not results.get("kv_datapath"):
        out.append("KV data-path bench: not run")
    out += [str(m) for m in results.get("missing", [])]
    return out


def evaluate_target(t: Target) -> dict[str, Any]:
    """A target row: ``status`` from :func:`kvstack.intervals.verdict` (met only when the interval
    clears the line in a run without failures), the interval as text, and how far the point value
    is from the target (positive: margin, negative: shortfall)."""
    value, target, op, unit = t.get("value"), float(t["target"]), t.get("op", ">="), t.get("unit", "")
    if op not in (">=", "<="):
        raise ValueError(f"target {t.get('name')}: op must be >= or <=, got {op}")
    lo, hi, failures = t.get("lo"), t.get("hi"), int(t.get("failures", 0))
    status = intervals.verdict(value, lo, hi, op, target, failures)
    row = {
        **t,
        "op": op,
        "target_text": f"{op} {target:g}{unit}",
        "value_text": "-",
        "interval_text": "-" if lo is None or hi is None else f"{lo:.3g}-{hi:.3g}{unit}",
        "status": status + (f" ({failures})" if failures and value is not None else ""),
    }
    if value is None:
        return {**row, "by": None, "by_text": "-"}
    value = float(value)
    rel = value / target - 1 if target else math.inf
    by = rel if op == ">=" else -rel
    return {
        **row,
        "value_text": f"{value:.3g}{unit}",
        "by": by,
        "by_text": f"{'margin' if by >= 0 else 'short by'} {abs(by) * 100:.0f}%",
    }


def _throughput_rows(results: ResultsJson) -> list[list[str]]:
    runs = run_index(results)
    rows = []
    for load in loads_of(results):
        base = _get(runs.get((BASELINE, load), {}), "summary", "total_tokens_per_s")
        for p in profiles_of(results):
            r = runs.get((p, load))
            if r is None:
                continue
            s = r["summary"]
            ratio = s["total_tokens_per_s"] / base if base else None
            rows.append(
                [
                    f"`{p}`",
                    load,
                    str(s["completed"]),
                    str(s["failed"]),
                    str(s.get("unsent", 0)),
                    fmt(s["input_tokens_per_s"]),
                    fmt(s["output_tokens_per_s"]),
                    fmt(s["total_tokens_per_s"]),
                    "-" if ratio is None else f"{ratio:.2f}x",
                    fmt(s["requests_per_s"], 2),
                    fmt(s["goodput_fraction"] * 100, 0) + "%",
                ]
            )
    return rows


def _itl_basis(s: Mapping[str, Any]) -> str:
    """How the run's ITL was counted: per token or per chunk, and the share of socket reads that
    carried more than one token."""
    share = s.get("itl_multi_token_share")
    return (
        f"{s.get('itl_per', 'chunk')}, {_pct(share)} multi"
        if share is not None
        else s.get("itl_per", "chunk")
    )


def _latency_rows(results: ResultsJson) -> list[list[str]]:
    runs = run_index(results)
    rows = []
    for load in loads_of(results):
        for p in profiles_of(results):
            r = runs.get((p, load))
            if r is None:
                continue
            s = r["summary"]
            cells = [f"`{p}`", load]
            cells += [fmt(_ms(s["ttft"][q])) for q in PERCENTILES]
            cells += [fmt(_ms(_get(s, "tpot", q))) for q in PERCENTILES]
            cells += [fmt(_ms(s["itl"][q])) for q in PERCENTILES]
            cells += [_itl_basis(s), *(fmt(s["e2e"][q], 2) for q in PERCENTILES)]
            rows.append(cells)
    return rows


#: the "Where time goes" tables: a metric goes to the first group whose prefix it starts with
METRIC_GROUPS = (
    ("vLLM", ("vLLM", "external", "prompt tokens", "queue", "prefill", "preemptions")),
    ("LMCache", ("LMCache",)),
    ("KV server and nodes", ("",)),
)


def _metrics_tables(results: ResultsJson) -> list[dict[str, Any]]:
    """Per-run counters as tables per :data:`METRIC_GROUPS`, runs in profile then load order."""
    order = {
        (p, load): i
        for i, (p, load) in enumerate((p, x) for p in profiles_of(results) for x in loads_of(results))
    }
    runs = sorted(
        (r for r in results.get("runs", []) if r.get("metrics")),
        key=lambda r: order.get((r["profile"], str(r["load"])), len(order)),
    )
    keys = list(dict.fromkeys(k for r in runs for k in r["metrics"]))
    grouped: dict[str, list[str]] = {}
    for k in keys:
        title = next(t for t, prefixes in METRIC_GROUPS if k.startswith(prefixes))
        grouped.setdefault(title, []).append(k)
    tables = []
    for title, _ in METRIC_GROUPS:
        ks = grouped.get(title)
        if not ks:
            continue
        rows = []
        for r in runs:
            cells = [f"`{r['profile']}`", str(r["load"])]
            for k in ks:
                v = r["metrics"].get(k)
                cells.append(
                    fmt(v, 3 if abs(v) < 10 else 1)
                    if isinstance(v, float)
                    else "-"
                    if v is None
                    else f"{v:,}"
                )
            rows.append(cells)
        tables.append({"title": title, "keys": ks, "rows": rows})
    return tables


def _kv_table(results: ResultsJson) -> dict[str, Any] | None:
    rows = results.get("kv_datapath") or []
    sized = [r for r in rows if r.get("value_bytes") is not None]
    refs = [r for r in rows if r.get("value_bytes") is None]
    if not rows:
        return None
    paths = list(dict.fromkeys(r["path"] for r in sized))
    cells: dict[tuple[int, str], float] = {(r["value_bytes"], r["path"]): r["gb_per_s"] for r in sized}
    table = [
        [fmt_bytes(size)] + [fmt(cells.get((size, p)), 2) for p in paths]
        for size in sorted({r["value_bytes"] for r in sized})
    ]
    return {"paths": paths, "rows": table, "refs": [[r["path"], fmt(r["gb_per_s"], 2)] for r in refs]}


def _probe_table(results: ResultsJson) -> dict[str, Any] | None:
    """The TTFT probe (``results["ttft_probe"]``): per phase P50/min/max TTFT and where its prompt
    tokens came from (vLLM's and LMCache's counters)."""
    p = results.get("ttft_probe")
    if not p:
        return None
    rows = []
    for phase, values in (p.get("ttft_s") or {}).items():
        src = (p.get("tokens_by_source") or {}).get(phase, {})
        rows.append(
            [
                phase,
                str(len(values)),
                fmt(_ms(_get(p, "ttft_p50_s", phase))),
                fmt(_ms(min(values)) if values else None),
                fmt(_ms(max(values)) if values else None),
            ]
            + [f"{int(src[k]):,}" if k in src else "-" for k in PROBE_SOURCES]
        )
    return {"tokens": p.get("prompt_tokens"), "n": p.get("n"), "failed": p.get("failed", 0), "rows": rows}


def _probes_table(results: ResultsJson) -> list[list[str]]:
    """One row per configuration the probe ran in (with ``--chunk-sizes`` or ``--set``)."""
    rows = []
    for label, p in (results.get("ttft_probes") or {}).items():
        p50 = p.get("ttft_p50_s") or {}
        cold, local, kv = (p50.get(k) for k in ("cold", "vLLM prefix-cache hit", "KV-server tier hit"))
        rows.append(
            [
                f"`{label}`",
                fmt(_ms(cold)),
                fmt(_ms(local)),
                fmt(_ms(kv)),
                fmt(kv / local, 2) + "x" if kv and local else "-",
                fmt(cold / kv, 1) + "x" if kv and cold else "-",
            ]
        )
    return rows if len(rows) > 1 else []


def _rocksdb_table(results: ResultsJson) -> dict[str, Any] | None:
    """The RocksDB engine bench (``results["rocksdb"]``, kvstack.rocksbench.run_rocksdb): one row per
    profile, medium and value size; ``unmapped`` lists per profile the Kvrocks keys not applied."""
    rows = results.get("rocksdb") or []
    if not rows:
        return None
    table = []
    for r in rows:
        st = r.get("stats") or {}
        amp = st.get("bytes_read_per_byte_returned")
        table.append(
            [
                f"`{r['profile']}`",
                str(r.get("medium", "-")),
                fmt_bytes(r.get("value_bytes")),
                fmt(r.get("put_gb_per_s"), 2),
                fmt(r.get("put_flush_gb_per_s"), 2),
                fmt(r.get("get_gb_per_s"), 2),
                fmt(r.get("put_p99_ms")),
                f"{st.get('block_cache_hit', '-')} / {st.get('block_cache_miss', '-')}",
                fmt(amp, 2),
                fmt(st.get("stall_micros") / 1000 if st.get("stall_micros") is not None else None),
                str(st.get("write_stall_count", "-")),
            ]
        )
    unmapped = {r["profile"]: ", ".join(r.get("unmapped") or []) or "none" for r in rows}
    return {"rows": table, "unmapped": [[f"`{p}`", u] for p, u in unmapped.items()]}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _config_tables(runs: Sequence[Mapping[str, Any]], per: str) -> tuple[list[list[str]], list[list[str]]]:
    """Runs of one configuration each (routing, Dynamo): latency and throughput per configuration,
    and requests and hit rates per node (``runs[i][per]``: node -> figures)."""
    summary, nodes = [], []
    for r in runs:
        s = r["summary"]
        summary.append(
            [r["config"], str(s["requests"]), str(s["failed"] + s.get("unsent", 0))]
            + [fmt(s["total_tokens_per_s"], 0)]
            + [fmt(_ms(s["ttft"][q]), 0) for q in PERCENTILES]
            + [fmt(_ms(_get(s, "tpot", "p50")), 1), fmt(s["e2e"]["p95"], 2)]
        )
        for node, d in r[per].items():
            nodes.append(
                [r["config"], node, str(d["requests"]), f"{d['prompt_tokens']:,}"]
                + [_pct(d[k]) for k in ("vllm_hit_rate", "lmcache_hit_rate", "hit_rate")]
            )
    return summary, nodes


def _agree(row: Mapping[str, Any]) -> str:
    """A cross-check row's call (runs before 2026-12-07 stored a boolean)."""
    a = row["agree"]
    return a if isinstance(a, str) else ("yes" if a else "no")


def _crosscheck_table(results: ResultsJson) -> dict[str, Any] | None:
    """AIPerf beside our client: one row per figure, and the server's own mean TTFT of both runs."""
    cc = results.get("crosscheck")
    if not cc:
        return None
    rows = [
        [
            r["figure"],
            fmt(_ms(r["ours_s"])),
            fmt(_ms(r["aiperf_s"])),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            "-" if r.get("lo") is None else f"{r['lo']:.2f}-{r['hi']:.2f}x",
            f"**{_agree(r)}**" if _agree(r) == "no" else _agree(r),
        ]
        for r in cc["rows"]
    ]
    server = cc.get("server_ttft_mean_s") or {}
    return {
        **cc,
        "table": rows,
        "all_agree": all(_agree(r) != "no" for r in cc["rows"]),
        "server_ours_ms": fmt(_ms(server.get("ours"))),
        "server_aiperf_ms": fmt(_ms(server.get("aiperf"))),
        "server_quantiles": {
            who: " / ".join(fmt(_ms(q.get(stat))) for stat in ("p50", "p95"))
            for who, q in (cc.get("server_ttft_s") or {}).items()
        },
        "client_ms": fmt(_ms(cc.get("client_ttft_mean_s"))),
        "costs": _crosscheck_costs(cc),
    }


def _crosscheck_costs(cc: dict[str, Any]) -> list[list[str]]:
    """Per client: its run's wall seconds, its own CPU seconds (and cores' worth), vLLM's hit rate."""
    cpu, wall, hit = (cc.get(k) or {} for k in ("client_cpu_s", "wall_s", "prefix_hit_rate"))
    rows = []
    for who, name in (("ours", "ours"), ("aiperf", "AIPerf")):
        if who in cpu and wall.get(who):
            cores = cpu[who] / wall[who]
            rows.append([name, fmt(wall[who]), fmt(cpu[who]), f"{cores:.2f}", fmt(hit.get(who))])
    return rows


def _routing_tables(results: ResultsJson) -> dict[str, Any] | None:
    """Routing runs: per configuration and per serving node."""
    routing = results.get("routing") or {}
    runs = routing.get("runs") or []
    if not runs:
        return None
    summary, nodes = _config_tables(runs, "per_node")
    return {"router": routing.get("router", ""), "summary": summary, "nodes": nodes}


#: Fewer requests than this in a configuration and the ratios between configurations are noise
#: (16 per configuration gave 0.68x-1.09x for a pair a larger run measured at 2.48x); the report
#: says so beside them. No confidence intervals are computed yet.
MIN_RATIO_SAMPLE = 100


def _dynamo_tables(results: ResultsJson) -> dict[str, Any] | None:
    """Dynamo runs: per configuration and per worker, and the ratios measured between them."""
    dyn = results.get("dynamo") or {}
    runs = dyn.get("runs") or []
    if not runs:
        return None
    summary, workers = _config_tables(runs, "per_worker")
    ratios = [[k, "-" if v is None else f"{v:.2f}x"] for k, v in (dyn.get("comparisons") or {}).items()]
    fewest = min(r["summary"]["requests"] for r in runs)
    return {
        "frontend": dyn.get("frontend", ""),
        "router_mode": dyn.get("router_mode", ""),
        "summary": summary,
        "workers": workers,
        "ratios": ratios,
        "small_sample": fewest if fewest < MIN_RATIO_SAMPLE else None,
    }


def context(results: ResultsJson, images: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything the template shows, as preformatted strings."""
    machine = dict(results.get("machine") or {})
    images = images or {}
    missing = missing_parts(results)
    return {
        "run_id": results.get("run_id", "unnamed run"),
        "started_at": results.get("started_at"),
        "finished_at": results.get("finished_at"),
        "interrupted": bool(results.get("interrupted")) or bool(missing),
        "machine_description": machine.pop("description", None),
        "machine": machine,
        "workload": results.get("workload"),
        "ceiling": results.get("ceiling"),
        "profiles": profiles_of(results),
        "loads": loads_of(results),
        "throughput_rows": _throughput_rows(results),
        "latency_rows": _latency_rows(results),
        "metrics": _metrics_tables(results),
        "kv": _kv_table(results),
        "rocksdb": _rocksdb_table(results),
        "probe": _probe_table(results),
        "crosscheck": _crosscheck_table(results),
        "probes": _probes_table(results),
        "routing": _routing_tables(results),
        "dynamo": _dynamo_tables(results),
        "targets": [evaluate_target(t) for t in results.get("targets", [])],
        "missing": missing,
        "min_ratio_sample": MIN_RATIO_SAMPLE,
        "images": images,
        "latency_images": [
            (x, images[f"latency_{x}"]) for x in loads_of(results) if f"latency_{x}" in images
        ],
        "baseline": BASELINE,
    }


def render_markdown(results: ResultsJson, images: dict[str, str] | None = None) -> str:
    """The report as Markdown; *images* maps plot names (``throughput``, ``latency_<load>``,
    ``kv_datapath``) to paths relative to the report."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML
    )
    return env.get_template(TEMPLATE).render(**context(results, images))


def summary_table(results: ResultsJson) -> str:
    """A plain-text table of tokens/s and TTFT P50 per profile and load, for the end of a run."""
    w = max([10, *(len(p) for p in profiles_of(results))])
    runs = run_index(results)
    head = (
        f"{'profile':<{w}} {'load':<8} {'ok':>5} {'fail':>4} {'tok/s':>10} {'vs none':>8} {'TTFT p50 ms':>12}"
    )
    lines = [head, "-" * len(head)]
    for load in loads_of(results):
        base = _get(runs.get((BASELINE, load), {}), "summary", "total_tokens_per_s")
        for p in profiles_of(results):
            r = runs.get((p, load))
            if r is None:
                lines.append(f"{p:<{w}} {load:<8} {'missing':>5}")
                continue
            s = r["summary"]
            ratio = f"{s['total_tokens_per_s'] / base:.2f}x" if base else "-"
            lines.append(
                f"{p:<{w}} {load:<8} {s['completed']:>5} {s['failed']:>4} {fmt(s['total_tokens_per_s']):>10} "
                f"{ratio:>8} {fmt(_ms(s['ttft']['p50'])):>12}"
            )
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_throughput(results: ResultsJson, path: Path) -> bool:
    """Input and output tokens/s per profile and load (grouped bars), labelled with the ratio to
    ``none``; False (nothing written) without runs."""
    runs = run_index(results)
    if not runs:
        return False
    plt = _pyplot()
    profiles, loads = profiles_of(results), loads_of(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(profiles), 1)
    for ax, key, title in zip(
        axes,
        ("input_tokens_per_s", "output_tokens_per_s"),
        ("input tokens/s", "output tokens/s"),
        strict=True,
    ):
        for i, p in enumerate(profiles):
            xs, ys, labels = [], [], []
            for j, load in enumerate(loads):
                r = runs.get((p, load))
                if r is None:
                    continue
                v = r["summary"][key]
                base = _get(runs.get((BASELINE, load), {}), "summary", key)
                xs.append(j + (i - (len(profiles) - 1) / 2) * width)
                ys.append(v)
                labels.append(f"{v / base:.2f}x" if base else "")
            bars = ax.bar(xs, ys, width, label=p)
            ax.bar_label(bars, labels, fontsize=7)
        ax.set_xticks(range(len(loads)), loads)
        ax.set_xlabel("load level")
        ax.set_title(f"{title} (ratio to {BASELINE})")
        ax.legend(fontsize=8)
    _save(plt, fig, path)
    return True


def _save(plt: Any, fig: Any, path: Path) -> None:
    """Lay out, write a PNG and free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_latency(results: ResultsJson, load: str, path: Path) -> bool:
    """TTFT, ITL and E2E P50/P95/P99 per profile at one load (grouped bars)."""
    runs = run_index(results)
    profiles = [p for p in profiles_of(results) if (p, load) in runs]
    if not profiles:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    width = 0.8 / len(PERCENTILES)
    for ax, (metric, scale, unit) in zip(
        axes, (("ttft", 1000, "ms"), ("itl", 1000, "ms"), ("e2e", 1, "s")), strict=True
    ):
        for i, q in enumerate(PERCENTILES):
            ys = [(runs[(p, load)]["summary"][metric][q] or 0) * scale for p in profiles]
            xs = [j + (i - 1) * width for j in range(len(profiles))]
            ax.bar(xs, ys, width, label=q.upper())
        ax.set_xticks(range(len(profiles)), profiles)
        ax.set_ylabel(unit)
        ax.set_title(f"{metric.upper()} at load {load}")
        ax.legend(fontsize=8)
    _save(plt, fig, path)
    return True


def plot_kv_datapath(results: ResultsJson, path: Path) -> bool:
    """GB/s per value size for each data path (lines); size-less references as dashed lines."""
    rows = results.get("kv_datapath") or []
    if not rows:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sized = [r for r in rows if r.get("value_bytes") is not None]
    for p in dict.fromkeys(r["path"] for r in sized):
        pts = sorted((r["value_bytes"], r["gb_per_s"]) for r in sized if r["path"] == p)
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=p)
    for r in rows:
        if r.get("value_bytes") is None:
            ax.axhline(r["gb_per_s"], linestyle="--", linewidth=1, color="grey")
            ax.annotate(r["path"], (0.01, r["gb_per_s"]), xycoords=("axes fraction", "data"), fontsize=7)
    sizes = sorted({r["value_bytes"] for r in sized})
    if sizes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [fmt_bytes(s) for s in sizes], rotation=30, fontsize=8)
    ax.set_xlabel("value size")
    ax.set_ylabel("GB/s")
    ax.set_title("KV data path throughput")
    ax.legend(fontsize=8)
    _save(plt, fig, path)
    return True


def plot_rocksdb(results: ResultsJson, path: Path) -> bool:
    """RocksDB engine bench: put and get GB/s per profile, medium and value size (grouped bars)."""
    rows = results.get("rocksdb") or []
    if not rows:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    groups = list(dict.fromkeys((r["profile"], r.get("medium", "-")) for r in rows))
    sizes = sorted({r["value_bytes"] for r in rows})
    width = 0.8 / max(len(sizes), 1)
    for ax, key, title in zip(axes, ("put_gb_per_s", "get_gb_per_s"), ("put GB/s", "get GB/s"), strict=True):
        for i, size in enumerate(sizes):
            cells = {(r["profile"], r.get("medium", "-")): r[key] for r in rows if r["value_bytes"] == size}
            xs = [j + (i - (len(sizes) - 1) / 2) * width for j in range(len(groups))]
            ax.bar(xs, [cells.get(g, 0) for g in groups], width, label=fmt_bytes(size))
        ax.set_xticks(range(len(groups)), [f"{p}\n{m}" for p, m in groups], fontsize=7)
        ax.set_ylabel("GB/s")
        ax.set_title(f"RocksDB {title} per Kvrocks profile")
        ax.legend(fontsize=8)
    _save(plt, fig, path)
    return True


def plot_routing(results: ResultsJson, path: Path) -> bool:
    """Routing: TTFT P50/P95/P99 per configuration, and hit rate per node and configuration."""
    runs = (results.get("routing") or {}).get("runs") or []
    return _plot_configs(runs, "per_node", "TTFT through the router", "hit rate per serving node", path)


def plot_dynamo(results: ResultsJson, path: Path) -> bool:
    """Dynamo: TTFT P50/P95/P99 per configuration, and hit rate per worker and configuration."""
    runs = (results.get("dynamo") or {}).get("runs") or []
    return _plot_configs(runs, "per_worker", "TTFT through Dynamo's frontend", "hit rate per worker", path)


def _plot_configs(runs: Sequence[Mapping[str, Any]], per: str, title1: str, title2: str, path: Path) -> bool:
    """TTFT percentiles per configuration (left) and, per node, the share of prompt tokens from
    vLLM's own cache and from LMCache (right, stacked)."""
    if not runs:
        return False
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    configs = [textwrap.fill(r["config"], 16) for r in runs]
    width = 0.8 / len(PERCENTILES)
    for i, q in enumerate(PERCENTILES):
        ys = [(r["summary"]["ttft"][q] or 0) * 1000 for r in runs]
        ax1.bar([j + (i - 1) * width for j in range(len(runs))], ys, width, label=q.upper())
    ax1.set_xticks(range(len(runs)), configs, fontsize=8)
    ax1.set_ylabel("ms")
    ax1.set_title(title1)
    ax1.legend(fontsize=8)
    nodes = list(dict.fromkeys(n for r in runs for n in r[per]))
    width = 0.8 / max(len(nodes), 1)
    for i, node in enumerate(nodes):
        stats = [r[per].get(node) or {} for r in runs]
        own = [100 * (d.get("vllm_hit_rate") or 0) for d in stats]
        lm = [100 * (d.get("lmcache_hit_rate") or 0) for d in stats]
        xs = [j + (i - (len(nodes) - 1) / 2) * width for j in range(len(runs))]
        bars = ax2.bar(xs, own, width, label=f"{node}: vLLM's own cache")
        top = ax2.bar(
            xs,
            lm,
            width,
            bottom=own,
            color=bars.patches[0].get_facecolor(),
            alpha=0.45,
            hatch="//",
            label=f"{node}: LMCache",
        )
        labels = [
            f"{a:.0f}+{b:.0f}%" if node in r[per] else "" for a, b, r in zip(own, lm, runs, strict=True)
        ]
        ax2.bar_label(top, labels, fontsize=7)
    ax2.set_xticks(range(len(runs)), configs, fontsize=8)
    ax2.set_ylabel("% of prompt tokens from a cache")
    ax2.set_title(f"{title2}: vLLM's own cache + LMCache")
    ax2.set_ylim(0, 135)
    ax2.legend(fontsize=7, loc="upper left", ncol=2)
    _save(plt, fig, path)
    return True


def write_plots(results: ResultsJson, outdir: Path) -> dict[str, str]:
    """Write every plot the results allow into *outdir*; returns name -> file name."""
    images: dict[str, str] = {}
    if plot_throughput(results, outdir / "throughput.png"):
        images["throughput"] = "throughput.png"
    for load in loads_of(results):
        name = f"latency_{safe_name(load)}.png"
        if plot_latency(results, load, outdir / name):
            images[f"latency_{load}"] = name
    if plot_kv_datapath(results, outdir / "kv_datapath.png"):
        images["kv_datapath"] = "kv_datapath.png"
    if plot_rocksdb(results, outdir / "rocksdb.png"):
        images["rocksdb"] = "rocksdb.png"
    if plot_routing(results, outdir / "routing.png"):
        images["routing"] = "routing.png"
    if plot_dynamo(results, outdir / "dynamo.png"):
        images["dynamo"] = "dynamo.png"
    return images


def write_report(results_dir: str | Path, *, plots: bool = True) -> Path:
    """Render ``results_dir/results.json`` into ``report.md`` and PNG plots beside it; returns the
    report's path."""
    d = Path(results_dir)
    results = schema.load(d / "results.json")
    images = write_plots(results, d) if plots else {}
    out = d / "report.md"
    out.write_text(render_markdown(results, images))
    return out
