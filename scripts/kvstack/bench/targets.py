"""The issues' targets, met or missed, from what a run measured (value None where not measured)."""

from __future__ import annotations

from kvstack import report, routing
from kvstack.bench.probe import PROBE_TOKENS
from kvstack.results_schema import ResultsJson, RunEntry, Target
from kvstack_node import datapath

TARGETS = {"throughput_x": 3.0, "kv_vs_local_hit_x": 1.25, "cold_vs_kv_x": 5.0, "l2_vs_raw": 0.70}


def targets(results: ResultsJson, ws_ratio: float | None) -> list[Target]:
    """The issue's targets from what this run measured (value None where not measured)."""
    out: list[Target] = []
    runs = report.run_index(results)
    for load in report.loads_of(results):
        base = _tps(runs.get(("none", load)))
        top = _tps(runs.get(("dram+kv", load)))
        out.append(
            {
                "name": "tokens/s dram+kv vs none",
                "value": top / base if base and top else None,
                "target": TARGETS["throughput_x"],
                "op": ">=",
                "unit": "x",
                "detail": f"{results.get('workload', {}).get('name', '')}, load {load}, working set "
                + (f"{ws_ratio:.1f}x vLLM's KV space" if ws_ratio else "?"),
            }
        )
    p = (results.get("ttft_probe") or {}).get("ttft_p50_s") or {}
    cold, local, kv = p.get("cold"), p.get("vLLM prefix-cache hit"), p.get("KV-server tier hit")
    out.append(
        {
            "name": "TTFT P50 KV-server tier vs vLLM prefix-cache hit",
            "value": kv / local if kv and local else None,
            "target": TARGETS["kv_vs_local_hit_x"],
            "op": "<=",
            "unit": "x",
            "detail": f"{PROBE_TOKENS}-token context",
        }
    )
    out.append(
        {
            "name": "TTFT P50 cold vs KV-server tier",
            "value": cold / kv if kv and cold else None,
            "target": TARGETS["cold_vs_kv_x"],
            "op": ">=",
            "unit": "x",
            "detail": f"{PROBE_TOKENS}-token context",
        }
    )
    chunk = results.get("chunk_bytes")
    ratios = datapath.l2_vs_raw(results.get("kv_datapath") or [])
    # the measured value size nearest one LMCache chunk of this model
    size = min(ratios, key=lambda s: abs(s - (chunk or 0))) if ratios else None
    out.append(
        {
            "name": "LMCache L2 retrieve vs raw RESP GET",
            "value": ratios.get(size) if size else None,
            "target": TARGETS["l2_vs_raw"],
            "op": ">=",
            "unit": "x",
            "detail": f"value {report.fmt_bytes(size)} (one LMCache chunk of this model)" if size else "",
        }
    )
    rt = (results.get("routing") or {}).get("target") or {}
    higher = rt.get("hit_rate_higher_on") or {}
    out.append(
        {
            "name": "TTFT P95 round-robin vs cache-aware routing (2 nodes)",
            "value": rt.get("measured"),
            "target": routing.TARGET_P95_X,
            "op": ">=",
            "unit": "x",
            "detail": "multi-round QA through the router",
        }
    )
    out.append(
        {
            "name": "share of serving nodes with a higher hit rate under cache-aware routing",
            "value": sum(higher.values()) / len(higher) if higher else None,
            "target": 1.0,
            "op": ">=",
            "unit": "",
            "detail": ", ".join(f"{n}: {'yes' if v else 'no'}" for n, v in higher.items()),
        }
    )
    return out


def _tps(run_: RunEntry | None) -> float | None:
    return ((run_ or {}).get("summary") or {}).get("total_tokens_per_s")
