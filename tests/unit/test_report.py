"""Report rendering from a synthetic results.json: tables, targets, image links, PNGs, missing parts."""

from __future__ import annotations

import copy
import json

import pytest

from kvstack import report
from kvstack.measure import safe_name
from kvstack.stats import SLO, RequestResult, summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPEED = {"none": 1.0, "dram": 1.5, "kv": 2.0, "dram+kv": 3.2}


def summary(f: float) -> dict:
    """10 requests of 100 prompt and 10 output tokens in 1/f s: 1000f input tok/s, 100f output tok/s."""
    recs = []
    for i in range(10):
        t0 = i * 0.01
        ttft = 0.1 / f + i * 0.002
        toks = [t0 + ttft + k * 0.02 / f for k in range(10)]
        recs.append(RequestResult(t0, toks[-1], toks[0], toks, 100, 10))
    return summarize(recs, slo=SLO(ttft_s=1.0), wall_time_s=1.0 / f).to_dict()


def full_results() -> dict:
    runs = [
        {
            "profile": p,
            "load": load,
            "summary": summary(f * (2 if load == "c4" else 1)),
            "metrics": {"prefix-cache hits": int(100 * f), "hit rate": f / 4},
        }
        for load in ("c1", "c4")
        for p, f in SPEED.items()
    ]
    kv = [
        {"path": path, "value_bytes": size, "gb_per_s": gbps}
        for size, vals in {
            262144: (0.8, 0.5, 0.6),
            2097152: (1.9, 1.2, 1.5),
            33554432: (0.6, 0.4, 0.3),
        }.items()
        for path, gbps in zip(("raw RESP GET", "raw RESP SET", "LMCache L2 GET"), vals, strict=True)
    ]
    kv += [
        {"path": "memcpy", "value_bytes": None, "gb_per_s": 9.1},
        {"path": "loopback TCP", "value_bytes": None, "gb_per_s": 2.0},
    ]
    return {
        "run_id": "2026-11-28T12-00-00",
        "started_at": "2026-11-28T12:00:00Z",
        "finished_at": "2026-11-28T12:40:00Z",
        "interrupted": False,
        "machine": {"description": "2 cores, 24 GiB, Debian 12, no GPU (the lab)", "cpus": 2},
        "workload": {
            "name": "multi-round-qa",
            "params": {"users": 362, "rounds": 10},
            "working_set_tokens": 1048576,
            "working_set_bytes": 4 << 30,
        },
        "plan": {"profiles": list(SPEED), "loads": ["c1", "c4"], "kv_datapath": True},
        "runs": runs,
        "kv_datapath": kv,
        "targets": [
            {
                "name": "tokens/s dram+kv vs none",
                "value": 3.2,
                "target": 3,
                "op": ">=",
                "unit": "x",
                "lo": 3.1,
                "hi": 3.3,
                "failures": 0,
            },
            {
                "name": "TTFT KV tier vs prefix-cache hit",
                "value": 1.5,
                "target": 1.25,
                "op": "<=",
                "unit": "x",
                "lo": 1.4,
                "hi": 1.6,
            },
            {"name": "L2 vs raw RESP", "value": None, "target": 0.7, "op": ">="},
        ],
    }


def interrupted_results() -> dict:
    r = copy.deepcopy(full_results())
    r["interrupted"] = True
    r["finished_at"] = None
    r["runs"] = [x for x in r["runs"] if not (x["load"] == "c4" and x["profile"] in ("kv", "dram+kv"))]
    del r["kv_datapath"]
    r["missing"] = ["target TTFT from the KV tier: its run did not happen"]
    return r


def test_evaluate_target_met_missed_and_by_how_much():
    t = report.evaluate_target(
        {"name": "a", "value": 2.1, "target": 3, "op": ">=", "unit": "x", "lo": 1.9, "hi": 2.3}
    )
    assert t["status"] == "missed" and t["by"] == pytest.approx(-0.3) and t["by_text"] == "short by 30%"
    assert t["value_text"] == "2.1x" and t["target_text"] == ">= 3x" and t["interval_text"] == "1.9-2.3x"
    t = report.evaluate_target({"name": "b", "value": 1.0, "target": 1.25, "op": "<=", "lo": 0.9, "hi": 1.1})
    assert t["status"] == "met" and t["by"] == pytest.approx(0.2) and t["by_text"] == "margin 20%"
    t = report.evaluate_target({"name": "c", "value": 1.5, "target": 1.25, "op": "<=", "lo": 1.3, "hi": 1.7})
    assert t["status"] == "missed" and t["by"] == pytest.approx(-0.2)
    # the point clears the line, the interval straddles it: not met
    t = report.evaluate_target({"name": "s", "value": 3.3, "target": 3, "op": ">=", "lo": 2.8, "hi": 3.9})
    assert t["status"] == "inconclusive" and t["by_text"] == "margin 10%"
    # a point value without an interval is shown, never called met
    t = report.evaluate_target({"name": "p", "value": 9.0, "target": 3, "op": ">="})
    assert t["status"] == "no interval" and t["interval_text"] == "-"
    # failures behind a clean interval
    t = report.evaluate_target(
        {"name": "f", "value": 3.5, "target": 3, "op": ">=", "lo": 3.2, "hi": 3.8, "failures": 2}
    )
    assert t["status"] == "not met: failures (2)"
    assert report.evaluate_target({"name": "d", "value": None, "target": 1})["status"] == "not measured"
    with pytest.raises(ValueError):
        report.evaluate_target({"name": "e", "value": 1, "target": 1, "op": "=="})


def test_markdown_tables_targets_and_machine():
    md = report.render_markdown(full_results())
    assert "# KV-cache tier benchmark: 2026-11-28T12-00-00" in md
    assert "2 cores, 24 GiB, Debian 12, no GPU (the lab)" in md and "- cpus: 2" in md
    assert "users=362, rounds=10" in md and "1,048,576 tokens (4,096.0 MiB" in md
    # throughput rows: 1000f input, 100f output tok/s, ratio to none at the same load (c4 runs twice as fast)
    assert "| `none` | c1 | 10 | 0 | 0 | 1,000.0 | 100.0 | 1,100.0 | 1.00x | 10.00 | 100% |" in md
    assert "| `dram+kv` | c1 | 10 | 0 | 0 | 3,200.0 | 320.0 | 3,520.0 | 3.20x | 32.00 | 100% |" in md
    assert "| `dram+kv` | c4 | 10 | 0 | 0 | 6,400.0 | 640.0 | 7,040.0 | 3.20x | 64.00 | 100% |" in md
    # latency row of none at c1: TTFT 100, 102, ..., 118 ms (P50 rank 4.5: 109, P95 rank 8.55: 117.1,
    # P99 rank 8.91: 117.82), TPOT and ITL 20 ms (one token per chunk, no per-chunk counts: per
    # chunk), E2E to the last token = TTFT + 9 x 20 ms: 0.289, 0.2971, 0.29782 s
    assert (
        "| `none` | c1 | 109.0 | 117.1 | 117.8 | 20.0 | 20.0 | 20.0 | 20.0 | 20.0 | 20.0 | chunk, 0% multi "
        "| 0.29 | 0.30 | 0.30 |"
    ) in md
    assert "| target | measured | 95% interval | required | status | by |" in md
    assert "| tokens/s dram+kv vs none | 3.2x | 3.1-3.3x | >= 3x | **met** | margin 7% |" in md
    assert (
        "| TTFT KV tier vs prefix-cache hit | 1.5x | 1.4-1.6x | <= 1.25x | **missed** | short by 20% |" in md
    )
    assert "| L2 vs raw RESP | - | - | >= 0.7 | **not measured** | - |" in md
    assert "| value size | raw RESP GET | raw RESP SET | LMCache L2 GET |" in md
    assert "| 2 MiB | 1.90 | 1.20 | 1.50 |" in md and "| 256 KiB | 0.80 | 0.50 | 0.60 |" in md
    assert "| memcpy | 9.10 |" in md and "| loopback TCP | 2.00 |" in md
    assert "| profile | load | prefix-cache hits | hit rate |" in md and "| `kv` | c1 | 200 | 0.500 |" in md
    assert "Incomplete run" not in md
    assert "Nothing: every planned profile, load level and bench ran." in md
    assert "![" not in md  # no images passed


def test_interrupted_run_lists_what_is_missing():
    r = interrupted_results()
    assert report.missing_parts(r) == [
        "profile `kv` at load `c4`: not run",
        "profile `dram+kv` at load `c4`: not run",
        "KV data-path bench: not run",
        "target TTFT from the KV tier: its run did not happen",
    ]
    md = report.render_markdown(r)
    assert "**Incomplete run**" in md
    assert "- profile `dram+kv` at load `c4`: not run" in md and "- KV data-path bench: not run" in md
    assert "| `dram+kv` | c1 |" in md and "| `dram+kv` | c4 |" not in md  # what ran is still reported
    assert "## KV data path\n\nNot measured in this run." in md
    # a run that stopped without a plan or notes still renders
    bare = report.render_markdown({"runs": []})
    assert "No load runs." in bare and "Not recorded." in bare


def test_summary_table_prints_ratios_and_missing():
    text = report.summary_table(interrupted_results())
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["profile", "load"]
    assert any(line.split()[:2] == ["dram+kv", "c1"] and "3.20x" in line for line in lines)
    assert any(line.split() == ["kv", "c4", "missing"] for line in lines)


def test_write_report_writes_markdown_and_valid_pngs(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(full_results()))
    out = report.write_report(tmp_path)
    assert out == tmp_path / "report.md"
    md = out.read_text()
    names = ["throughput.png", "latency_c1.png", "latency_c4.png", "kv_datapath.png"]
    for name in names:
        assert f"]({name})" in md
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(names)


def test_write_report_of_interrupted_run(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(interrupted_results()))
    md = report.write_report(tmp_path).read_text()
    assert (tmp_path / "latency_c4.png").read_bytes()[:8] == PNG_MAGIC  # none and dram ran at c4
    assert not (tmp_path / "kv_datapath.png").exists() and "kv_datapath.png" not in md
    assert "- profile `kv` at load `c4`: not run" in md


def test_plot_file_names_use_the_one_sanitizer(tmp_path):
    """A load label a file name should not carry becomes the file name kvstack.measure.safe_name
    gives (as the raw runs' files do): ``-`` for each run of other characters."""
    r = full_results()
    r["plan"]["loads"] = ["c1", "q0.5 per s"]
    for x in r["runs"]:
        x["load"] = x["load"].replace("c4", "q0.5 per s")
    images = report.write_plots(r, tmp_path)
    assert (
        images["latency_q0.5 per s"] == f"latency_{safe_name('q0.5 per s')}.png" == "latency_q0.5-per-s.png"
    )
    assert (tmp_path / "latency_q0.5-per-s.png").read_bytes()[:8] == PNG_MAGIC
    assert "](latency_q0.5-per-s.png)" in report.render_markdown(r, images)
