"""Dynamo bench logic: per-worker figures from counters, the frontend's worker count, the ratios
between configurations, and the report's section."""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from test_report import PNG_MAGIC, full_results, summary

from kvstack import dynamo_bench, report
from kvstack import results_schema as schema
from kvstack.stack import Endpoints, StackError

SRC = "vllm:prompt_tokens_by_source_total"


def worker_deltas(local: float, external: float, computed: float, requests: float) -> dict[str, float]:
    return {
        f'{SRC}{{engine="0",model_name="tiny",source="local_cache_hit"}}': local,
        f'{SRC}{{engine="0",model_name="tiny",source="external_kv_transfer"}}': external,
        f'{SRC}{{engine="0",model_name="tiny",source="local_compute"}}': computed,
        'vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny"}': requests,
        'vllm:request_success_total{engine="0",finished_reason="stop",model_name="tiny"}': 1,
    }


def test_per_worker_requests_and_hit_rates():
    d = {"dynamo@serve1": worker_deltas(600, 200, 200, 29), "dynamo@serve2": worker_deltas(0, 0, 0, 0)}
    out = dynamo_bench.per_worker(d, ["serve1", "serve2"])
    assert out["serve1"] == {
        "requests": 30,
        "prompt_tokens": 1000,
        "vllm_hit_rate": 0.6,
        "lmcache_hit_rate": 0.2,
        "hit_rate": 0.8,
    }
    assert out["serve2"]["prompt_tokens"] == 0 and out["serve2"]["hit_rate"] is None
    assert schema.problems(out, dict[str, schema.NodeStats], "per_worker") == []


def run(config: str, ttft_scale: float, rates: dict[str, float]) -> dict:
    n = 2 if "2 workers" in config else 1
    return {
        "config": config,
        "workers": n,
        "lmcache": "lmcache" in config,
        "summary": summary(1 / ttft_scale),
        "per_worker": {
            w: {
                "requests": 10,
                "prompt_tokens": 1000,
                "vllm_hit_rate": r,
                "lmcache_hit_rate": 0.25,
                "hit_rate": r + 0.25,
            }
            for w, r in rates.items()
        },
    }


RUNS = [
    run("dynamo+lmcache 2 workers", 0.5, {"serve1": 0.5, "serve2": 0.5}),
    run("dynamo+lmcache 1 worker", 0.8, {"serve1": 0.3}),
    run("dynamo 1 worker", 1.0, {"serve1": 0.3}),
    run("dynamo 2 workers", 0.8, {"serve1": 0.5, "serve2": 0.5}),
]


def test_comparisons_are_ratios_of_this_runs_figures():
    c = dynamo_bench.comparisons(RUNS)
    p95 = {r["config"]: r["summary"]["ttft"]["p95"] for r in RUNS}
    tps = {r["config"]: r["summary"]["total_tokens_per_s"] for r in RUNS}
    assert c["lmcache TTFT P95 speed-up (1 worker)"] == pytest.approx(
        p95["dynamo 1 worker"] / p95["dynamo+lmcache 1 worker"]
    )
    assert c["lmcache TTFT P95 speed-up (2 workers)"] > 1  # the faster run is LMCache's
    assert c["2 vs 1 worker tokens/s (dynamo)"] == pytest.approx(
        tps["dynamo 2 workers"] / tps["dynamo 1 worker"]
    )
    # A configuration that did not run leaves its ratios empty, not zero.
    partial = dynamo_bench.comparisons(RUNS[:2])
    assert partial["lmcache TTFT P95 speed-up (1 worker)"] is None
    assert partial["2 vs 1 worker tokens/s (dynamo+lmcache)"] is not None


class _Health(BaseHTTPRequestHandler):
    doc: ClassVar[dict] = {}

    def do_GET(self):
        body = json.dumps(self.doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def frontend():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_frontend_workers_counts_generate_instances(frontend):
    """Dynamo 1.6's /health lists every registered endpoint instance; only workers' generate
    endpoints count (the same worker listed twice counts once)."""
    gen = {"component": "backend", "endpoint": "generate", "namespace": "dynamo"}
    _Health.doc = {
        "status": "healthy",
        "instances": [
            {**gen, "instance_id": 1},
            {**gen, "instance_id": 1},
            {**gen, "instance_id": 2},
            {"component": "backend", "endpoint": "clear_kv_blocks", "instance_id": 1},
        ],
    }
    assert dynamo_bench.frontend_workers(frontend) == 2
    _Health.doc = {"status": "healthy", "instances": []}
    assert dynamo_bench.frontend_workers(frontend) == 0
    assert dynamo_bench.frontend_workers("http://127.0.0.1:9") == 0  # nothing listening


def test_frontend_of_names_the_missing_group_or_the_off_switch():
    ep = Endpoints(nodes={}, serving={}, kv=[])
    with pytest.raises(StackError, match="dynamo_frontend"):
        dynamo_bench.frontend_of(ep)
    ep.dynamo = {"frontend": {"kv1": {"url": "", "router_mode": "kv"}}, "workers": {}}
    with pytest.raises(StackError, match="dynamo_enabled"):
        dynamo_bench.frontend_of(ep)


def test_report_has_the_dynamo_section_and_plot(tmp_path):
    res = copy.deepcopy(full_results())
    res["dynamo"] = {
        "frontend": "http://10.0.0.21:8300",
        "router_mode": "kv",
        "runs": RUNS,
        "comparisons": dynamo_bench.comparisons(RUNS),
    }
    (tmp_path / "results.json").write_text(json.dumps(res))
    from kvstack import report

    md = report.write_report(tmp_path).read_text()
    assert "## NVIDIA Dynamo" in md and "router mode\n`kv`" in md
    assert "| dynamo+lmcache 2 workers | serve2 | 10 | 1,000 | 50% | 25% | 75% |" in md
    ratio = dynamo_bench.comparisons(RUNS)["lmcache TTFT P95 speed-up (2 workers)"]
    assert f"| lmcache TTFT P95 speed-up (2 workers) | {ratio:.2f}x |" in md
    assert "](dynamo.png)" in md
    assert (tmp_path / "dynamo.png").read_bytes()[:8] == PNG_MAGIC


def test_report_without_dynamo_says_how_to_measure_it(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(full_results()))
    from kvstack import report

    md = report.write_report(tmp_path, plots=False).read_text()
    assert "## NVIDIA Dynamo\n\nNot measured in this run (`fab run-bench --dynamo`)." in md


def test_report_says_when_the_sample_is_too_small_for_the_ratios():
    """16 requests per configuration (the lab test's size) gets the note; a large run does not."""
    runs = copy.deepcopy(RUNS)
    results = {
        "dynamo": {"frontend": "http://f", "runs": runs, "comparisons": dynamo_bench.comparisons(runs)}
    }
    for r in runs:
        r["summary"]["requests"] = 16
    md = report.render_markdown(results)
    assert "Too small a sample for these ratios" in md
    assert f"ran 16 requests (fewer than {report.MIN_RATIO_SAMPLE})" in " ".join(md.split())
    for r in runs:
        r["summary"]["requests"] = report.MIN_RATIO_SAMPLE
    assert "Too small a sample" not in report.render_markdown(results)
