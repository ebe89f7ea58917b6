"""AIPerf as the cross-check's second client: the dataset it replays (our prompts, in our order),
its command line, its summary read back in seconds, and the comparison rows. (Its run against
vLLM is the bench lab test's, with --aiperf.)"""

from __future__ import annotations

import json

import pytest

from kvstack import aiperf, report
from kvstack import intervals as iv
from kvstack import metrics as m
from kvstack import results_schema as schema
from kvstack.bench import crosscheck

SENT = [
    {"conversation": "u1", "turn": 0, "prompt": "a", "max_tokens": 4},
    {"conversation": "u0", "turn": 0, "prompt": "b", "max_tokens": 4},
    {"conversation": "u1", "turn": 1, "prompt": "a 1 c", "max_tokens": 8},
    {"conversation": "u0", "turn": 1, "prompt": "b 2 d", "max_tokens": 8},
]


def test_dataset_groups_each_conversation_in_turn_order():
    lines = [json.loads(x) for x in aiperf.dataset(SENT, {"ignore_eos": True}).splitlines()]
    assert [(x["session_id"], x["text"], x["output_length"]) for x in lines] == [
        ("u1", "a", 4),
        ("u1", "a 1 c", 8),
        ("u0", "b", 4),
        ("u0", "b 2 d", 8),
    ]
    assert all(x["extra"] == {"ignore_eos": True} for x in lines)
    assert "extra" not in json.loads(aiperf.dataset(SENT[:1]).splitlines()[0])


def test_command_replays_the_file_with_server_token_counts(tmp_path):
    cmd = aiperf.command(
        tmp_path / "aiperf",
        url="http://10.0.0.1:8000",
        model="tiny",
        tokenizer=tmp_path,
        concurrency=4,
        sessions=8,
        input_file=tmp_path / "d.jsonl",
        artifact_dir=tmp_path / "out",
        api_key="sekret",
    )
    flags = dict(zip(cmd[2::2], cmd[3::2], strict=False))
    assert cmd[1] == "profile" and "--streaming" in cmd and "--use-server-token-count" in cmd
    assert cmd[cmd.index("--endpoint-type") + 1] == "completions"
    assert cmd[cmd.index("--custom-dataset-type") + 1] == "single_turn"
    assert cmd[cmd.index("--conversation-num") + 1] == "8" and cmd[cmd.index("--concurrency") + 1] == "4"
    assert cmd[cmd.index("--api-key") + 1] == "sekret" and flags.get("--model") == "tiny"


def test_run_logs_the_command_without_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE" not in aiperf.environment()  # AIPerf 0.13.0 misreads local paths with it
    log = tmp_path / "aiperf.log"
    aiperf.run(["/bin/sh", "-c", "echo ran", "--api-key", "sekret"], log, 30)
    text = log.read_text()
    assert "sekret" not in text and "--api-key ***" in text and "ran" in text
    with pytest.raises(aiperf.AiperfError, match="exited 3"):
        aiperf.run(["/bin/sh", "-c", "exit 3"], log, 30)


def test_summary_in_seconds_and_the_comparison(tmp_path):
    doc = {
        "aiperf_version": "0.13.0",
        "time_to_first_token": {"unit": "ms", "p50": 110.0, "p95": 300.0},
        "inter_token_latency": {"unit": "ms", "p50": 20.0, "p95": 40.0},
        "request_count": {"unit": "requests", "avg": 16.0},
        "error_summary": [{"error_details": {"code": 500}, "count": 2}],
    }
    (tmp_path / "profile_export_aiperf.json").write_text(json.dumps(doc))
    theirs = aiperf.read_summary(tmp_path)
    assert theirs["ttft"] == {"p50": pytest.approx(0.11), "p95": pytest.approx(0.3)}
    assert theirs["tpot"]["p95"] == pytest.approx(0.04)
    assert (theirs["requests"], theirs["errors"], theirs["version"]) == (16, 2, "0.13.0")
    ours = {"ttft": {"p50": 0.1, "p95": 0.2}, "tpot": {"p50": 0.02, "p95": 0.04}}
    rows = {r["figure"]: r for r in crosscheck.compare(ours, theirs)}
    assert rows["TTFT P50"]["ratio"] == pytest.approx(1.1) and rows["TTFT P50"]["agree"] == "yes"
    assert rows["TTFT P95"]["ratio"] == pytest.approx(1.5) and rows["TTFT P95"]["agree"] == "no"
    assert rows["TPOT P95"]["agree"] == "yes" and len(rows) == 4 and rows["TPOT P95"]["lo"] is None
    with pytest.raises(aiperf.AiperfError, match=r"no profile_export_aiperf\.json"):
        aiperf.read_summary(tmp_path / "nowhere")
    doc["time_to_first_token"]["unit"] = "tokens"
    (tmp_path / "profile_export_aiperf.json").write_text(json.dumps(doc))
    with pytest.raises(aiperf.AiperfError, match="not a time unit"):
        aiperf.read_summary(tmp_path)


def test_a_difference_inside_the_runs_noise_is_not_a_disagreement():
    """P95 of 20 requests: 1.3x with a heavy tail (three slow requests decide P95) is "within
    noise": its interval reaches into the 15% band; a tight 1.3x (every request 1.3x) is "no"."""
    ours = [0.1] * 17 + [0.2, 0.4, 0.6]
    wide = iv.bootstrap_ratio([x * 1.3 for x in ours], ours, iv.p(95))
    assert wide.value == pytest.approx(1.3) and crosscheck.agreement(wide.value, wide) == "within noise"
    tight = [0.2] * 20
    assert crosscheck.agreement(1.3, iv.bootstrap_ratio([0.26] * 20, tight, iv.p(95))) == "no"
    assert crosscheck.agreement(1.1, None) == "yes" and crosscheck.agreement(None, None) == "no"
    assert report._agree({"agree": True}) == "yes" and report._agree({"agree": False}) == "no"
    row = {"figure": "TTFT P95", "ours_s": 0.2, "aiperf_s": 0.26, "ratio": 1.3, "lo": 0.9, "hi": 1.9}
    assert schema.problems({**row, "agree": "within noise"}, schema.CrossCheckRow, "row") == []
    assert schema.problems({**row, "agree": True}, schema.CrossCheckRow, "row") == []  # runs before
    assert schema.problems({**row, "agree": "maybe"}, schema.CrossCheckRow, "row")


def test_aiperf_requests_in_seconds_profiling_phase_only(tmp_path):
    def line(phase: str, ttft_ms: float, **meta) -> str:
        metrics = {"time_to_first_token": {"value": ttft_ms, "unit": "ms"}}
        metrics["inter_token_latency"] = {"value": 20.0, "unit": "ms"}
        return json.dumps({"metadata": {"benchmark_phase": phase, **meta}, "metrics": metrics})

    (tmp_path / "profile_export.jsonl").write_text(
        "\n".join(
            [line("profiling", 100.0), line("warmup", 5.0), line("profiling", 300.0, was_cancelled=True)]
        )
        + "\n"
    )
    got = aiperf.read_requests(tmp_path)
    assert got == {"ttft": [pytest.approx(0.1)], "tpot": [pytest.approx(0.02)]}
    assert aiperf.read_requests(tmp_path / "nowhere") == {"ttft": [], "tpot": []}


def test_server_ttft_quantiles_from_vllms_buckets():
    """10 observations: 4 in (0, 0.1], 4 in (0.1, 0.5], 2 in (0.5, 1]: P50 is 1/4 of the way
    into (0.1, 0.5] = 0.2 s; P95 3/4 into (0.5, 1] = 0.875 s (cumulative buckets, as vLLM's)."""
    b = 'vllm:time_to_first_token_seconds_bucket{engine="0",le="%s"}'
    d = {"vllm": {b % "0.1": 4.0, b % "0.5": 8.0, b % "1.0": 10.0, b % "+Inf": 10.0}}
    q = crosscheck.server_ttft_quantiles(d)
    assert q["p50"] == pytest.approx(0.2) and q["p95"] == pytest.approx(0.875)
    assert crosscheck.server_ttft_quantiles({"vllm": {}}) == {"p50": None, "p95": None}
    snap = m.parse_prometheus(
        "# TYPE vllm:time_to_first_token_seconds histogram\n"
        'vllm:time_to_first_token_seconds_bucket{le="0.1"} 4.0\n'
        'vllm:time_to_first_token_seconds_bucket{le="+Inf"} 5.0\n'
        "vllm:time_to_first_token_seconds_sum 1.0\nvllm:time_to_first_token_seconds_count 5.0\n"
        "# TYPE vllm:e2e_request_latency_seconds histogram\n"
        'vllm:e2e_request_latency_seconds_bucket{le="+Inf"} 5.0\n'
        "vllm:e2e_request_latency_seconds_sum 1.0\nvllm:e2e_request_latency_seconds_count 5.0\n"
    )
    kept = {k for k in snap.values if "_bucket" in k}
    assert kept == {
        'vllm:time_to_first_token_seconds_bucket{le="0.1"}',
        'vllm:time_to_first_token_seconds_bucket{le="+Inf"}',
    }
    assert 'vllm:time_to_first_token_seconds_bucket{le="0.1"}' in snap.counters


def test_server_ttft_mean_from_vllms_histogram():
    d = {
        "vllm": {"vllm:time_to_first_token_seconds_sum": 3.0, "vllm:time_to_first_token_seconds_count": 12.0}
    }
    assert crosscheck.server_ttft(d) == pytest.approx(0.25)
    assert crosscheck.server_ttft({"vllm": {}}) is None


def test_costs_of_both_runs_in_the_report():
    """Each run's hit rate, CPU and wall time kept; the report's rows: cores busy = CPU / wall."""
    d = {
        "vllm": {
            "vllm:prefix_cache_queries_total": 200.0,
            "vllm:prefix_cache_hits_total": 50.0,
            "vllm:time_to_first_token_seconds_sum": 3.0,
            "vllm:time_to_first_token_seconds_count": 12.0,
        }
    }
    costs = crosscheck._costs(
        {"deltas": d, "cpu_s": 5.0, "wall_s": 20.0}, {"deltas": {"vllm": {}}, "cpu_s": 30.0, "wall_s": 25.0}
    )
    assert costs["prefix_hit_rate"] == {"ours": 0.25, "aiperf": None}
    assert costs["server_ttft_mean_s"]["ours"] == pytest.approx(0.25)
    rows = report._crosscheck_costs(costs)
    assert [r[0] for r in rows] == ["ours", "AIPerf"]
    assert rows[0][3] == "0.25" and rows[1][3] == "1.20"
