"""results.json's schema (kvstack.results_schema): the bench's Results takes only its keys, every key
the bench writes is one of them, and the report's loader checks a file against it (required keys,
types) while tolerating what an interrupted run lacks."""

from __future__ import annotations

import ast
import copy
import json

import pytest
from test_report import full_results, interrupted_results

from kvstack import REPO, report
from kvstack import results_schema as schema
from kvstack.bench.results import Results

BENCH = REPO / "scripts" / "kvstack" / "bench"


def test_put_and_update_refuse_a_key_the_schema_lacks(tmp_path):
    res = Results(tmp_path, "run1")
    with pytest.raises(schema.SchemaError, match="'kv_datapth'; did you mean 'kv_datapath'"):
        res.put("kv_datapth", [])
    assert "kv_datapth" not in res.data and not (tmp_path / "run1" / "results.json").exists()
    with pytest.raises(schema.SchemaError, match="'finshed_at'"):
        res.update(interrupted=False, finshed_at="2026-11-28T12:00:00")
    assert res.data["interrupted"] is True  # nothing set when one key is unknown
    res.put("kv_datapath", [])
    assert json.loads((tmp_path / "run1" / "results.json").read_text())["kv_datapath"] == []
    assert set(res.data) <= set(schema.KEYS)


def _written_keys() -> set[str]:
    """Top-level keys the bench's modules write: ``*res.put("key", ...)``, ``*res.update(key=...)``
    and the routed steps' ``RoutedStep("key", ...)`` (which puts under its key)."""
    keys = set()
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if isinstance(f, ast.Attribute) and ast.unparse(f.value).endswith("res"):
                if f.attr == "put" and isinstance(node.args[0], ast.Constant):
                    keys.add(node.args[0].value)
                elif f.attr == "update":
                    keys |= {k.arg for k in node.keywords}
            elif isinstance(f, ast.Name) and f.id == "RoutedStep":
                keys.add(node.args[0].value)
    return keys


def test_every_key_the_bench_writes_is_in_the_schema():
    written = _written_keys()
    assert len(written) >= 15, written  # the scan finds the writes
    assert written <= set(schema.KEYS), written - set(schema.KEYS)


def test_no_top_level_key_is_written_past_put_and_update():
    """``res.data["key"] = ...`` would skip the key check; nested writes (a row into a known
    key) are fine."""
    for path in sorted((REPO / "scripts").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for t in targets:
                if isinstance(t, ast.Subscript):
                    assert not ast.unparse(t.value).endswith("res.data"), f"{path}: {ast.unparse(t)}"


def test_results_json_bytes_and_key_order_are_as_before(tmp_path):
    """The file is ``json.dumps(data, indent=2, default=str)``, keys in the order they were first
    written (existing results.json files and the template keep working)."""
    res = Results(tmp_path, "run1")
    res.update(machine={"controller CPUs": 2}, options={"results_dir": "r"}, ttft_probe=None, ttft_probes={})
    res.put("plan", {"node": "n1"})
    text = (tmp_path / "run1" / "results.json").read_text()
    assert text == json.dumps(res.data, indent=2, default=str)
    assert list(json.loads(text)) == [
        "run_id",
        "started_at",
        "finished_at",
        "interrupted",
        "runs",
        "missing",
        "machine",
        "options",
        "ttft_probe",
        "ttft_probes",
        "plan",
    ]
    assert schema.load(tmp_path / "run1" / "results.json") == res.data


def test_load_accepts_complete_interrupted_and_unknown_keys(tmp_path):
    for results in (full_results(), interrupted_results()):
        (tmp_path / "results.json").write_text(json.dumps(results))
        assert schema.load(tmp_path / "results.json") == results
    older = full_results()
    older["from_an_older_bench"] = {"anything": 1}
    older["runs"][0]["extra"] = "kept"
    older["machine"]["cpus"] = 2
    assert schema.validate(older) == older


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda r: r.pop("run_id"), "results.json: no 'run_id'"),
        (lambda r: r.pop("interrupted"), "results.json: no 'interrupted'"),
        (lambda r: r["runs"][0].pop("summary"), r"results.json.runs\[0\]: no 'summary'"),
        (lambda r: r.update(runs={}), "results.json.runs: dict {} is not a list"),
        (lambda r: r["kv_datapath"][0].update(gb_per_s="fast"), r"kv_datapath\[0\].gb_per_s: str 'fast'"),
        (lambda r: r["kv_datapath"][0].update(value_bytes=1.5), r"kv_datapath\[0\].value_bytes"),
        (lambda r: r["targets"][0].update(op="=="), r"targets\[0\].op: '==' is not one of '>=', '<='"),
        (lambda r: r.update(interrupted="no"), "interrupted: str 'no' is not bool"),
        (lambda r: r["machine"].update({"controller CPUs": "two"}), r"machine\['controller CPUs'\]"),
    ],
)
def test_load_names_what_does_not_follow_the_schema(tmp_path, change, named):
    results = copy.deepcopy(full_results())
    change(results)
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(schema.SchemaError, match=named):
        schema.load(tmp_path / "results.json")
    with pytest.raises(schema.SchemaError, match=named):
        report.write_report(tmp_path, plots=False)
    assert not (tmp_path / "report.md").exists()


def test_a_run_that_failed_before_any_step_still_gets_a_report(tmp_path):
    """What results.json holds when the first step failed: the run's own keys, the plan, the error."""
    res = Results(tmp_path, "run1")
    res.update(machine={"controller CPUs": 2, "controller memory GiB": 23.4}, ttft_probe=None, ttft_probes={})
    res.put("plan", {"node": "n1", "profiles": ["none", "kv"], "loads": ["c4"], "kv_datapath": True})
    res.update(error="StackError: n1 unreachable")
    res.note_missing("run stopped early: StackError: n1 unreachable")
    md = report.write_report(res.dir, plots=False).read_text()
    assert "**Incomplete run**" in md
    assert "- profile `kv` at load `c4`: not run" in md and "- KV data-path bench: not run" in md
    assert "- run stopped early: StackError: n1 unreachable" in md
