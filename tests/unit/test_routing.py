"""Routing bench logic: per-node figures from counters, the target, and the report's section."""

from __future__ import annotations

import copy
import json

import pytest
from test_report import PNG_MAGIC, full_results, summary

from kvstack import loadgen, measure, routing
from kvstack import results_schema as schema
from kvstack.stats import SLO, RequestResult, read_jsonl

URLS = {"serve1": "http://10.0.0.11:8000", "serve2": "http://10.0.0.12:8000"}
SRC = "vllm:prompt_tokens_by_source_total"


def deltas(
    local: dict[str, float], external: dict[str, float], computed: dict[str, float], reqs: dict
) -> dict:
    out = {
        f"vllm@{n}": {
            f'{SRC}{{engine="0",model_name="tiny",source="local_cache_hit"}}': local[n],
            f'{SRC}{{engine="0",model_name="tiny",source="external_kv_transfer"}}': external[n],
            f'{SRC}{{engine="0",model_name="tiny",source="local_compute"}}': computed[n],
        }
        for n in URLS
    }
    out["router"] = {f'{routing.ROUTER_COUNTER}{{worker="{URLS[n]}"}}': reqs[n] for n in reqs}
    return out


def test_per_node_requests_and_hit_rates():
    d = deltas(
        {"serve1": 600, "serve2": 0},
        {"serve1": 200, "serve2": 500},
        {"serve1": 200, "serve2": 500},
        {
            "serve1": 30,
            "serve2": 10,
        },
    )
    out = routing.per_node(d, URLS)
    assert out["serve1"] == {
        "requests": 30,
        "prompt_tokens": 1000,
        "vllm_hit_rate": 0.6,
        "lmcache_hit_rate": 0.2,
        "hit_rate": 0.8,
    }
    assert out["serve2"]["requests"] == 10 and out["serve2"]["hit_rate"] == 0.5
    assert schema.problems(out, dict[str, schema.NodeStats], "per_node") == []


def test_per_node_without_traffic_has_no_rate():
    zero = dict.fromkeys(URLS, 0)
    out = routing.per_node(deltas(zero, zero, zero, {}), URLS)
    assert out["serve2"] == {
        "requests": 0,
        "prompt_tokens": 0,
        "vllm_hit_rate": None,
        "lmcache_hit_rate": None,
        "hit_rate": None,
    }


def run(config: str, ttft_scale: float, rates: dict[str, float]) -> dict:
    return {
        "config": config,
        "summary": summary(1 / ttft_scale),
        "per_node": {
            n: {
                "requests": 10,
                "prompt_tokens": 1000,
                "vllm_hit_rate": r,
                "lmcache_hit_rate": 0.1,
                "hit_rate": r,
            }
            for n, r in rates.items()
        },
    }


@pytest.mark.parametrize(
    ("ca_scale", "ca_rates", "higher"),
    [
        (0.5, {"serve1": 0.9, "serve2": 0.8}, {"serve1": True, "serve2": True}),  # 2x, higher everywhere
        (0.8, {"serve1": 0.9, "serve2": 0.8}, {"serve1": True, "serve2": True}),  # only 1.25x
        (0.5, {"serve1": 0.9, "serve2": 0.3}, {"serve1": True, "serve2": False}),  # serve2's fell
    ],
)
def test_target_figures_the_ratio_and_every_node(ca_scale, ca_rates, higher):
    """The point ratio and each node's comparison; met or not is the interval's call
    (tests/unit/test_bench.py: the routing target's interval and verdict)."""
    runs = [
        run("2 nodes round_robin", 1.0, {"serve1": 0.5, "serve2": 0.5}),
        run("2 nodes cache_aware", ca_scale, ca_rates),
    ]
    t = routing.target(runs)
    assert "met" not in t and t["hit_rate_higher_on"] == higher
    p95 = [r["summary"]["ttft"]["p95"] for r in runs]
    assert t["measured"] == pytest.approx(p95[0] / p95[1])
    assert t["hit_rate_higher_on"]["serve1"] is True
    assert schema.problems(t, schema.RoutingTarget, "routing.target") == []


def test_target_absent_without_both_two_node_runs():
    assert routing.target([run("1 node", 1.0, {"serve1": 0.5})]) is None


def test_report_has_the_routing_section_and_plot(tmp_path):
    res = copy.deepcopy(full_results())
    res["routing"] = {
        "router": "http://10.0.0.21:8100",
        "runs": [
            run("1 node", 2.0, {"serve1": 0.4}),
            run("2 nodes round_robin", 1.0, {"serve1": 0.5, "serve2": 0.5}),
            run("2 nodes cache_aware", 0.5, {"serve1": 0.9, "serve2": 0.8}),
        ],
    }
    (tmp_path / "results.json").write_text(json.dumps(res))
    from kvstack import report

    md = report.write_report(tmp_path).read_text()
    assert "## Routing: 1 vs 2 serving nodes" in md
    assert "| 2 nodes cache_aware | serve2 | 10 | 1,000 | 80% | 10% | 80% |" in md
    assert "](routing.png)" in md
    assert (tmp_path / "routing.png").read_bytes()[:8] == PNG_MAGIC


def test_config_run_writes_the_runs_files_and_summary(tmp_path, monkeypatch):
    """kvstack.measure.config_run, the measured run of one routing or Dynamo configuration: the
    requests and counter deltas under runs/, the summary over the run's own wall time."""
    recs = [RequestResult(i, i + 0.5, i + 0.1, [i + 0.1], 10, 1) for i in range(3)]
    seen = []

    def fake_run(conversations, lc, progress=None):
        seen.append((lc.url, progress is not None))
        return loadgen.RunResult(recs, 0.0, 4.0, "workload done", 3, 0)

    monkeypatch.setattr(loadgen, "run", fake_run)
    lc = loadgen.LoadConfig("http://router:8100", "tiny")
    run = measure.config_run("routing", "2 nodes cache_aware", [[]], lc, [], tmp_path, SLO())
    assert seen == [("http://router:8100/v1/completions", True)]  # with a progress logger
    assert run.file == "runs/routing__2-nodes-cache_aware.jsonl"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "routing__2-nodes-cache_aware.jsonl",
        "routing__2-nodes-cache_aware.metrics.json",
    ]
    assert run.summary["requests"] == 3 and run.summary["wall_time_s"] == 4.0
    assert run.deltas == {} and run.errors == []
    # three passes, one after another: one run of their requests, wall times summed, and no two
    # passes share a conversation (the intervals resample conversations)
    recs[:] = [RequestResult(i, i + 0.5, i + 0.1, [i + 0.1], 10, 1, conversation="u0") for i in range(3)]
    run = measure.config_run("routing", "2 nodes round_robin", [[], [], []], lc, [], tmp_path, SLO())
    assert len(seen) == 4 and run.summary["requests"] == 9 and run.summary["wall_time_s"] == 12.0
    merged = read_jsonl(tmp_path / "routing__2-nodes-round_robin.jsonl")
    assert {r.conversation for r in merged} == {"p0/u0", "p1/u0", "p2/u0"}
    assert [len(g) for g in loadgen.split_passes(merged)] == [3, 3, 3]  # the passes, for the intervals
    assert [len(g) for g in loadgen.split_passes(recs)] == [3]  # one run: one pass
