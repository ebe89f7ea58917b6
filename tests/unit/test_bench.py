"""The bench runner's pure parts (kvstack.bench): argument checks that name the bad option, load
levels, the matrix order, repeats merged into one summary, vLLM's KV space, targets."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from kvstack import bench, loadgen, report, routing, stack
from kvstack import results_schema as schema
from kvstack.bench import BenchError, BenchOptions, Cell, Load
from kvstack.bench import ceiling as bench_ceiling
from kvstack.bench import context as bench_context
from kvstack.bench import options as bench_options
from kvstack.bench import probe as bench_probe
from kvstack.bench import workload as bench_workload
from kvstack.stats import SLO, RequestResult


def test_load_levels():
    assert Load.parse("c4") == Load("c4", "closed", 4)
    assert Load.parse(" q2.5 ") == Load("q2.5", "open", 2.5)
    for bad in ("4", "c", "c-1", "q0", "x3", "c0"):
        with pytest.raises(BenchError, match="--loads"):
            Load.parse(bad)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"size": "huge"}, "--size"),
        ({"profiles": ("none", "ssd")}, "--profiles"),
        ({"profiles": ("none", "none")}, "--profiles"),
        ({"profiles": ()}, "--profiles"),
        ({"workload": "chat"}, "--workload"),
        ({"loads": ("c4", "c4")}, "--loads"),
        ({"loads": ("fast",)}, "--loads"),
        ({"rounds": 0}, "--rounds"),
        ({"history_tokens": -1}, "--history-tokens"),
        ({"answer_tokens": 0}, "--answer-tokens"),
        ({"kv_ratio": 0.0}, "--kv-ratio"),
        ({"users": 0}, "--users"),
        ({"repeats": 0}, "--repeats"),
        ({"chunk_sizes": (0,)}, "--chunk-sizes"),
        ({"max_seconds": -1.0}, "--max-seconds"),
        ({"datapath_sizes": (0,)}, "--datapath-sizes"),
        ({"rocksdb_n": 0}, "--rocksdb-n"),
        ({"switch": False}, "--no-switch"),
        ({"extra_vars": {"tier_profile": "kv"}}, "--set"),
        ({"extra_vars": {"bad-name": "1"}}, "--set"),
        ({"extra_vars": {"vllm_num_kv_blocks": "9"}}, "--set"),
        ({"vary": {"lmcache_chunk_size": ("512",)}, "chunk_sizes": (256,)}, "--vary"),
        ({"vary": {"tier_profile": ("kv",)}}, "--vary"),
        ({"vary": {"lmcache_kv_workers": ()}}, "--vary"),
        ({"vary": {"x": ("1",)}, "extra_vars": {"x": "2"}}, "--vary"),
        ({"rocksdb_dir": Path("/nonexistent/kvstack")}, "--rocksdb-dir"),
        ({"routing_load": "q2"}, "--routing-load"),
        ({"routing_load": "fast"}, "--routing-load"),
        ({"routing_kv_ratio": 0.0}, "--routing-kv-ratio"),
        ({"routing_passes": 0}, "--routing-passes"),
    ],
)
def test_bad_options_are_named(options, named):
    with pytest.raises(BenchError, match=named):
        bench.validate(BenchOptions(**options))


def test_good_options_and_presets():
    loads = bench.validate(BenchOptions())
    assert [x.label for x in loads] == ["c4"]
    o = BenchOptions(size="full", rounds=2)
    assert o.preset("rounds") == 2 and o.preset("history_tokens") == bench.PRESETS["full"]["history_tokens"]
    assert bench.validate(BenchOptions(switch=False, profiles=("dram",), probe=False))


def test_cells_and_schedule():
    o = BenchOptions(profiles=("none", "dram", "kv"), chunk_sizes=(256, 512))
    cs = bench.cells(o)
    # none does not use LMCache: one cell; the others one per chunk size
    assert [c.label for c in cs] == [
        "none",
        "dram chunk=256",
        "dram chunk=512",
        "kv chunk=256",
        "kv chunk=512",
    ]
    assert Cell("kv", 512).extra_vars() == {"tier_profile": "kv", "lmcache_chunk_size": 512}
    plan = bench.schedule(cs, repeats=3, seed=7)
    assert plan == bench.schedule(cs, repeats=3, seed=7)  # seeded
    for r in range(3):
        assert sorted(c.label for rr, c in plan if rr == r) == sorted(c.label for c in cs)  # each repeat once
    orders = [[c for rr, c in plan if rr == r] for r in range(3)]
    assert len({tuple(x) for x in orders}) > 1  # shuffled per repeat
    for a, b in itertools.pairwise(plan):
        assert a[0] == b[0] or a[1] != b[1]  # a repeat never starts where the previous ended


def test_vary_measures_one_variable_at_a_time_against_the_profile_as_it_is():
    o = BenchOptions(
        profiles=("none", "kv"), vary={"lmcache_kv_workers": ("1", "4"), "redis_server_save": ("[]",)}
    )
    assert [c.label for c in bench.cells(o)] == [
        "none",
        "kv",
        "kv lmcache_kv_workers=1",
        "kv lmcache_kv_workers=4",
        "kv redis_server_save=[]",
    ]
    # values reach Ansible as YAML reads them: a boolean, a number, a list, not their strings
    assert Cell("kv", tweak=("redis_server_appendonly", "false")).extra_vars() == {
        "tier_profile": "kv",
        "redis_server_appendonly": False,
    }
    assert Cell("kv", tweak=("redis_server_save", "[]")).extra_vars()["redis_server_save"] == []
    assert bench_options.yaml_value("4") == 4 and bench_options.yaml_value("resp") == "resp"
    assert bench_options.yaml_value("a: [") == "a: ["  # not YAML: the string as given
    assert bench_options.kv_side(o) and not bench_options.kv_side(
        BenchOptions(vary={"lmcache_kv_workers": ("4",)})
    )


def test_a_kv_server_variable_switches_the_kv_hosts_too(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(bench_context.provision, "apply", lambda log, heading, **kw: calls.append(kw) or 1.0)
    o = BenchOptions(vary={"redis_server_appendonly": ("false",)}, extra_vars={"lmcache_kv_workers": "8"})
    bench_context.switch(
        o, ["lab-serve1"], Cell("kv", tweak=("redis_server_appendonly", "false")), tmp_path / "l"
    )
    bench_context.switch(o, ["lab-serve1"], None, tmp_path / "l")  # the inventory's own values back
    assert calls[0]["limit"] == "lab-serve1,kv" and calls[0]["tags"].startswith("redis_server,kvrocks,")
    assert calls[0]["extra_vars"] == {
        "lmcache_kv_workers": 8,
        "tier_profile": "kv",
        "redis_server_appendonly": False,
    }
    assert calls[1]["limit"] == "lab-serve1,kv" and calls[1]["extra_vars"] is None
    bench_context.switch(BenchOptions(), ["lab-serve1"], Cell("none"), tmp_path / "l")
    assert calls[2]["limit"] == "lab-serve1" and calls[2]["tags"] == "lmcache,vllm"


def test_parse_kv_space():
    line = (
        'vllm:cache_config_info{block_size="128",cache_dtype="auto",engine="0",'
        'num_gpu_blocks="2048",num_gpu_blocks_override="128"} 1.0'
    )
    assert stack.parse_kv_space("# HELP x\n" + line) == (128 * 128, 128)
    assert stack.parse_kv_space(line.replace('"128"} 1.0', '"None"} 1.0')) == (2048 * 128, 128)
    with pytest.raises(stack.StackError, match="cache_config_info"):
        stack.parse_kv_space("vllm:other 1")


def _records(n: int, t0: float, prompt: int, ttft: float) -> list[RequestResult]:
    return [
        RequestResult(
            start=t0 + i,
            end=t0 + i + 0.5,
            first_token_time=t0 + i + ttft,
            token_times=[t0 + i + ttft],
            prompt_tokens=prompt,
            output_tokens=1,
        )
        for i in range(n)
    ]


def test_repeats_merge_into_one_entry(tmp_path):
    res = bench.Results(tmp_path, "run1")
    kv = {"kv": {"total_commands_processed": 10.0, "used_memory": 2.0**20}}
    counters = {"kv": {"total_commands_processed"}}
    res.add_run("dram", "c4", 0, _records(4, 0, 100, 0.1), 8.0, {}, kv, {"kv": "kv"}, counters, SLO())
    e = res.add_run("dram", "c4", 1, _records(2, 50, 100, 0.3), 2.0, {}, kv, {"kv": "kv"}, counters, SLO())
    assert len(res.data["runs"]) == 1 and [x["repeat"] for x in e["repeats"]] == [0, 1]
    s = e["summary"]
    assert s["requests"] == 6 and s["wall_time_s"] == 10.0  # the runs' own wall times, not the gap
    assert s["input_tokens_per_s"] == pytest.approx(600 / 10)
    assert e["metrics"]["KV server commands"] == 20 and e["metrics"]["KV server used MB"] == 1.0
    saved = json.loads((tmp_path / "run1" / "results.json").read_text())
    assert saved["runs"][0]["summary"]["requests"] == 6
    assert sorted(p.name for p in (tmp_path / "run1" / "runs").iterdir()) == [
        "dram__c4__r0.jsonl",
        "dram__c4__r0.metrics.json",
        "dram__c4__r1.jsonl",
        "dram__c4__r1.metrics.json",
    ]
    with pytest.raises(FileExistsError):
        bench.Results(tmp_path, "run1")  # a run never overwrites another's results


def _steady(path: Path, tokens: int, n: int = 40, span: float = 10.0) -> None:
    """*n* requests of *tokens* tokens each, 0.2 s long, ending evenly over *span* s (each its own
    conversation)."""
    recs = []
    for i in range(n):
        end = (i + 0.5) * span / n
        recs.append(RequestResult(end - 0.2, end, end - 0.1, [end - 0.1, end], tokens - 2, 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in recs))


def _probe(n: int = 3, **phases: list[float]) -> dict:
    """A probe of *n* 4096-token contexts whose phases came from where they claim."""
    tok = n * 4000
    return {
        "prompt_tokens": 4096,
        "n": n,
        "failed": 0,
        "ttft_s": {
            "cold": phases.get("cold", [1.0] * n),
            "vLLM prefix-cache hit": phases.get("local", [0.08] * n),
            "KV-server tier hit": phases.get("kv", [0.1] * n),
        },
        "tokens_by_source": {
            "cold": {
                "local_cache_hit": 0,
                "external_kv_transfer": 0,
                "LMCache L1 hit": 0,
                "LMCache L2 hit": 0,
            },
            "vLLM prefix-cache hit": {"local_cache_hit": tok, "external_kv_transfer": 0},
            "KV-server tier hit": {
                "local_cache_hit": 0,
                "external_kv_transfer": tok,
                "LMCache L1 hit": 0,
                "LMCache L2 hit": tok,
            },
        },
    }


def test_targets_hand_computed(tmp_path):
    """Steady runs: every request of none carries 100 tokens in 0.2 s, of dram+kv 250, so the
    ratio is 2.5 in every resample of the 40 conversations (interval 2.5-2.5: missed, not
    inconclusive). Probe: KV 0.1 s against vLLM's 0.08 s in every sample: 1.25, met at <= 1.25."""
    _steady(tmp_path / "runs/none.jsonl", 100)
    _steady(tmp_path / "runs/top.jsonl", 250)
    results = {
        "workload": {"name": "multi-round-qa"},
        "plan": {"profiles": ["none", "dram+kv"], "loads": ["c4"]},
        "runs": [
            {
                "profile": "none",
                "load": "c4",
                "summary": {"total_tokens_per_s": 400.0, "failed": 0, "unsent": 0},
                "repeats": [{"repeat": 0, "file": "runs/none.jsonl", "wall_s": 10.0, "meta": {}}],
            },
            {
                "profile": "dram+kv",
                "load": "c4",
                "summary": {"total_tokens_per_s": 1000.0, "failed": 0, "unsent": 0},
                "repeats": [{"repeat": 0, "file": "runs/top.jsonl", "wall_s": 10.0, "meta": {}}],
            },
        ],
        "ttft_probe": _probe(),
        "chunk_bytes": 1 << 20,
        "kv_datapath": [
            {"path": "raw RESP GET (parallel, pipelined)", "value_bytes": 1 << 20, "gb_per_s": 2.0},
            {"path": "LMCache L2 retrieve", "value_bytes": 1 << 20, "gb_per_s": 1.5},
            {"path": "raw RESP GET (parallel, pipelined)", "value_bytes": 4 << 20, "gb_per_s": 1.0},
        ],
    }
    t = {x["name"]: x for x in bench.targets(results, 4.0, tmp_path)}
    tput = t["tokens/s dram+kv vs none"]
    assert tput["value"] == pytest.approx(2.5) and (tput["lo"], tput["hi"]) == (pytest.approx(2.5),) * 2
    assert tput["samples"] == [40, 40] and tput["failures"] == 0
    assert "4.0x vLLM's KV space" in tput["detail"]
    kv = t["TTFT P50 KV-server tier vs vLLM prefix-cache hit"]
    assert kv["value"] == pytest.approx(1.25) and kv["hi"] == pytest.approx(1.25) and kv["failures"] == 0
    assert t["TTFT P50 cold vs KV-server tier"]["value"] == pytest.approx(10.0)
    l2 = t["LMCache L2 retrieve vs raw RESP GET"]
    assert l2["value"] == pytest.approx(0.75) and "lo" not in l2  # no samples: no interval
    assert schema.problems(list(t.values()), list[schema.Target], "targets") == []
    status = {x["name"]: report.evaluate_target(x)["status"] for x in t.values()}
    assert status["tokens/s dram+kv vs none"] == "missed"
    assert status["TTFT P50 KV-server tier vs vLLM prefix-cache hit"] == "met"
    assert status["LMCache L2 retrieve vs raw RESP GET"] == "no interval"
    # without the runs' requests the ratio is still shown, and not called met
    bare = {x["name"]: x for x in bench.targets(results, 4.0)}
    assert bare["tokens/s dram+kv vs none"]["value"] == pytest.approx(2.5)
    assert "lo" not in bare["tokens/s dram+kv vs none"]
    empty = {x["name"]: x for x in bench.targets({"runs": []}, None)}
    assert all(x["value"] is None for x in empty.values())  # not measured, never made up


def test_probe_phase_served_elsewhere_is_a_failure():
    """vLLM still held the context in the "KV-server" phase (its reset was refused): the phase's
    tokens came from vLLM's own cache, so both probe targets are not met whatever their values."""
    probe = _probe()
    probe["tokens_by_source"]["KV-server tier hit"] = {
        "local_cache_hit": 12000,
        "external_kv_transfer": 0,
        "LMCache L1 hit": 0,
        "LMCache L2 hit": 0,
    }
    problems = bench_probe.phase_problems(probe)
    assert len(problems) == 3 and all(p.startswith("KV-server tier hit: ") for p in problems)
    assert "12,000 tokens from local_cache_hit" in problems[0]
    t = {x["name"]: x for x in bench.targets({"runs": [], "ttft_probe": probe}, None)}
    row = t["TTFT P50 KV-server tier vs vLLM prefix-cache hit"]
    assert row["failures"] == 3 and "local_cache_hit" in row["detail"]
    assert report.evaluate_target(row)["status"] == "not met: failures (3)"
    assert bench_probe.phase_problems(_probe()) == []


def test_routing_target_interval_from_the_runs_requests(tmp_path):
    """Round-robin TTFTs 0.2-0.4 s, cache-aware 0.1-0.2 s (2x): the P95 ratio's interval is
    computed from the requests in the runs' files; one failed request makes it not met."""
    files = {}
    for name, lo in (("rr", 0.2), ("ca", 0.1)):
        recs = [RequestResult(0.0, 1.0, lo + lo * i / 99, [lo + lo * i / 99], 10, 1) for i in range(100)]
        files[name] = f"runs/routing__{name}.jsonl"
        (tmp_path / "runs").mkdir(exist_ok=True)
        (tmp_path / files[name]).write_text("".join(json.dumps(r.to_dict()) + "\n" for r in recs))

    def run(config: str, f: str, failed: int) -> dict:
        return {"config": config, "file": f, "summary": {"failed": failed, "unsent": 0}, "per_node": {}}

    results = {
        "runs": [],
        "routing": {
            "runs": [run("2 nodes round_robin", files["rr"], 0), run("2 nodes cache_aware", files["ca"], 0)],
            "target": {
                "target": "",
                "measured": 2.0,
                "hit_rate_higher_on": {"serve1": True, "serve2": False},
            },
        },
    }
    t = {x["name"]: x for x in bench.targets(results, None, tmp_path)}
    r = t["TTFT P95 round-robin vs cache-aware routing (2 nodes)"]
    assert r["value"] == pytest.approx(2.0) and r["lo"] <= 2.0 <= r["hi"] and r["samples"] == [100, 100]
    assert report.evaluate_target(r)["status"] == "met"  # 1.5 is below the whole interval
    share = t["share of serving nodes with a higher hit rate under cache-aware routing"]
    assert share["value"] == 0.5 and report.evaluate_target(share)["status"] == "no interval"
    results["routing"]["runs"][1]["summary"]["failed"] = 1
    t = {x["name"]: x for x in bench.targets(results, None, tmp_path)}
    r = t["TTFT P95 round-robin vs cache-aware routing (2 nodes)"]
    assert report.evaluate_target(r)["status"] == "not met: failures (1)"


class _FakeConnection:
    """Stands in for the Fabric connection: serves the model files from a local directory."""

    def __init__(self, files: dict[str, Path]):
        self.files = files

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def get(self, remote: str, local: str) -> None:
        Path(local).write_bytes(self.files[Path(remote).name].read_bytes())


def test_interrupted_run_keeps_what_it_measured(tmp_path, tokenizer_json, monkeypatch):
    """Ctrl-C during the second profile switch: the first run's data, results.json marked
    interrupted, a report listing the missing cell, and the inventory's profile restored.
    Everything outside the bench's own logic (Ansible, SSH, HTTP, the load) is replaced."""
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 256, "num_hidden_layers": 4}
        )
    )
    ep = stack.Endpoints(
        nodes={"n1": {}},
        serving={
            "n1": {
                "vllm": [
                    {"url": "http://n1:8000", "model": "tiny", "model_path": "/m", "api_key": "sk-secret"}
                ],
                "lmcache": {"chunk_size": 256, "kv_host": ""},
            }
        },
        kv=[],
    )
    switches: list[str | None] = []

    def switch(o, nodes, cell, log):
        switches.append(cell.label if cell else None)
        if len(switches) == 2:
            raise KeyboardInterrupt
        return 1.0

    def fake_run(conversations, cfg, progress=None):
        recs = [
            RequestResult(
                start=i,
                end=i + 0.5,
                first_token_time=i + 0.1,
                token_times=[i + 0.1],
                prompt_tokens=10,
                output_tokens=1,
            )
            for i in range(3)
        ]
        return loadgen.RunResult(recs, 0.0, 3.0, "workload done", 3, 0)

    monkeypatch.setattr(stack, "fetch_endpoints", lambda inv: ep)
    monkeypatch.setattr(
        stack,
        "connection",
        lambda e, n: _FakeConnection({"tokenizer.json": tokenizer_json, "config.json": config}),
    )
    monkeypatch.setattr(stack, "kv_space_tokens", lambda v: (2048, 128))
    monkeypatch.setattr(bench_context, "switch", switch)
    monkeypatch.setattr(stack, "wait_healthy", lambda v: None)
    monkeypatch.setattr(bench_workload, "warm_up", lambda *a: None)
    monkeypatch.setattr(stack, "reset_prefix_cache", lambda v: True)
    monkeypatch.setattr(stack, "metric_sources", lambda *a, **k: ([], {}))
    monkeypatch.setattr(loadgen, "run", fake_run)
    opts = BenchOptions(
        profiles=("none", "kv"),
        users=2,
        rounds=2,
        history_tokens=16,
        system_tokens=16,
        question_tokens=8,
        probe=False,
        datapath=False,
        rocksdb=False,
        results_dir=tmp_path / "results",
    )
    with pytest.raises(KeyboardInterrupt):
        bench.run_bench(opts)
    (out,) = (tmp_path / "results").iterdir()
    res = json.loads((out / "results.json").read_text())
    assert schema.validate(res) == res  # what the bench wrote follows the schema the report reads
    assert res["interrupted"] and "KeyboardInterrupt" in res["error"]
    assert len(res["runs"]) == 1 and res["runs"][0]["summary"]["requests"] == 3
    first = res["runs"][0]["profile"]
    missing = ({"none", "kv"} - {first}).pop()
    report_md = (out / "report.md").read_text()
    assert "Incomplete run" in report_md and f"profile `{missing}` at load `c4`: not run" in report_md
    assert switches == [first, missing, None]  # ... and the inventory's profile put back
    assert "sk-secret" not in "".join(f.read_text(errors="ignore") for f in out.rglob("*") if f.is_file())


def test_fab_task_lists_every_option_with_its_help():
    """``fab --help run-bench`` is built from BenchOptions: every field is an option there."""
    import dataclasses
    import inspect

    names = {f.metadata.get("cli") or f.name for f in dataclasses.fields(BenchOptions)}
    params = set(inspect.signature(bench_options.fab_task(lambda v: None)).parameters) - {"c"}
    assert params == names and set(bench_options.task_help()) == names
    assert all(bench_options.task_help().values())
    for hidden_before in ("system_tokens", "question_tokens", "answer_tokens", "warmup", "probe_n", "switch"):
        assert hidden_before in names


def test_command_line_values_become_typed_options():
    o = bench_options.from_cli(
        {
            "profiles": "none,kv",
            "rounds": "3",
            "kv_ratio": "2.5",
            "probe": False,
            "set_": ["lmcache_kv_workers=8"],
            "datapath_sizes": "1024,2048",
            "results": "/tmp/r",
            "warmup": None,
        }
    )
    assert o.profiles == ("none", "kv") and o.rounds == 3 and o.kv_ratio == 2.5 and not o.probe
    assert o.extra_vars == {"lmcache_kv_workers": "8"} and o.datapath_sizes == (1024, 2048)
    assert o.results_dir == Path("/tmp/r") and o.warmup == 2  # left out: the default
    with pytest.raises(BenchError, match="--rounds"):
        bench_options.from_cli({"rounds": "three"})
    with pytest.raises(BenchError, match="--set"):
        bench_options.from_cli({"set_": ["no-equals-sign"]})
    o = bench_options.from_cli({"vary": ["lmcache_kv_workers=1,4", "redis_server_appendonly=false"]})
    assert o.vary == {"lmcache_kv_workers": ("1", "4"), "redis_server_appendonly": ("false",)}
    with pytest.raises(BenchError, match="--vary"):
        bench_options.from_cli({"vary": ["lmcache_kv_workers"]})
    assert set(bench_options.iterable_args()) == {"set_", "vary"}


def test_kv_bytes_per_token_reads_the_models_dtype_and_head_dim():
    base = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 256, "num_hidden_layers": 4}
    assert bench_context.bytes_per_token({**base, "dtype": "float32"}) == 4 * 2 * 2 * 64 * 4
    assert bench_context.bytes_per_token({**base, "torch_dtype": "bfloat16"}) == 4 * 2 * 2 * 64 * 2
    assert (
        bench_context.bytes_per_token({**base, "dtype": "bfloat16", "head_dim": 128}) == 4 * 2 * 2 * 128 * 2
    )
    assert bench_context.bytes_per_token(base) == 4 * 2 * 2 * 64 * 4  # no dtype: float32, as saved


def test_seeds_are_derived_by_name_and_never_collide():
    ctx = bench_context.Context(BenchOptions(), [], None, "n1", None, salt=12345, slo=SLO())
    seeds = [ctx.seed("run", i, j) for i in range(20) for j in range(5)]
    seeds += [ctx.seed("warm-up", i) for i in range(20)] + [ctx.seed("probe", "kv"), ctx.seed("sample")]
    assert len(set(seeds)) == len(seeds)
    assert ctx.seed("run", 1, 2) == bench_context.Context(
        BenchOptions(), [], None, "n1", None, 12345, SLO()
    ).seed("run", 1, 2)


def test_every_step_follows_the_protocol():
    for step in bench.STEPS:
        assert isinstance(step.name, str) and isinstance(step.optional, bool)
        assert callable(step.enabled) and callable(step.planned) and callable(step.run)
    o = BenchOptions(probe=False, datapath=False, rocksdb=False, routing=False, crosscheck=False)
    assert [s.name for s in bench.STEPS if s.enabled(o)] == ["matrix", "ceiling"]
    o = BenchOptions(
        probe=False, datapath=False, rocksdb=False, routing=False, ceiling=False, crosscheck=False
    )
    assert [s.name for s in bench.STEPS if s.enabled(o)] == ["matrix"]
    assert [s.name for s in bench.STEPS if s.enabled(BenchOptions(matrix=False, dynamo=True))] == [
        "TTFT probe",
        "KV data path",
        "RocksDB engine bench",
        "AIPerf cross-check",
        "routing",
        "dynamo",
    ]


def test_chunk_sizes_are_checked_against_the_nodes_block_size():
    """GPU nodes (block size 16) take chunk sizes the CPU build (128) refuses, and the reverse."""
    bench_options.check_chunk_sizes(BenchOptions(chunk_sizes=(256, 48)), "gpu1", 16)
    with pytest.raises(
        BenchError, match="--chunk-sizes: 200 is not a multiple of lab-serve1's vLLM block size 128"
    ):
        bench_options.check_chunk_sizes(BenchOptions(chunk_sizes=(256, 200)), "lab-serve1", 128)
    with pytest.raises(BenchError, match="not a multiple"):
        bench_options.check_chunk_sizes(BenchOptions(vary={"lmcache_chunk_size": ("512", "200")}), "n", 128)


def test_ceiling_cells_hold_the_working_set():
    """The ceiling: none and the matrix's last LMCache profile, each with vLLM's cache at 1.25x
    the working set in whole blocks (never below what vLLM has); the switch sets the blocks."""
    assert bench_ceiling.ample_blocks(66_176, 128, 16_384) == 647  # ceil(82,720 / 128)
    assert bench_ceiling.ample_blocks(1_000, 128, 16_384) == 128  # already holds it
    o = BenchOptions(profiles=("none", "kv", "dram"))
    cs = bench_ceiling.ceiling_cells(o, 647)
    assert [c.label for c in cs] == ["none, ample vLLM cache", "dram, ample vLLM cache"]
    assert cs[1].extra_vars() == {"tier_profile": "dram", "vllm_num_kv_blocks": 647}
    assert [c.label for c in bench_ceiling.ceiling_cells(BenchOptions(profiles=("none",)), 9)] == [
        "none, ample vLLM cache"
    ]
    assert Cell("kv", 256).extra_vars() == {"tier_profile": "kv", "lmcache_chunk_size": 256}


def test_ceiling_and_overhead_targets(tmp_path):
    """kv at 250 tokens per window against a ceiling of 400: 0.625 of it, missed; kv with ample
    cache at 390 against none with ample cache at 400: overhead 0.975, met at >= 0.95."""
    for name, tokens in (("none", 100), ("kv", 250), ("ceil", 400), ("kvceil", 390)):
        _steady(tmp_path / f"runs/{name}.jsonl", tokens)

    def entry(profile: str, name: str, tps: float) -> dict:
        return {
            "profile": profile,
            "load": "c4",
            "summary": {"total_tokens_per_s": tps, "failed": 0, "unsent": 0},
            "repeats": [{"repeat": 0, "file": f"runs/{name}.jsonl", "wall_s": 10.0, "meta": {}}],
        }

    results = {
        "plan": {"profiles": ["none", "kv"], "loads": ["c4"], "ceiling": ["x"]},
        "ceiling": {"kv_blocks": 647, "tokens": 82_816, "top": "kv"},
        "runs": [
            entry("none", "none", 400.0),
            entry("kv", "kv", 1000.0),
            entry("none, ample vLLM cache", "ceil", 1600.0),
            entry("kv, ample vLLM cache", "kvceil", 1560.0),
        ],
    }
    t = {x["name"]: x for x in bench.targets(results, 4.0, tmp_path)}
    of = t["tokens/s kv vs the ceiling"]
    assert of["value"] == pytest.approx(0.625) and of["hi"] == pytest.approx(0.625)
    assert report.evaluate_target(of)["status"] == "missed" and "647 blocks" in of["detail"]
    over = t["LMCache overhead: tokens/s kv vs none, both with ample vLLM cache"]
    assert over["value"] == pytest.approx(0.975) and report.evaluate_target(over)["status"] == "met"
    results["plan"]["ceiling"] = []
    assert not [n for n in (x["name"] for x in bench.targets(results, 4.0, tmp_path)) if "ceiling" in n]


def test_a_tuning_row_per_vary_value_against_its_profile(tmp_path):
    """kv with 4 workers at 300 tokens per window against kv at 250: bought 1.2x, met (a gain);
    the value not measured has no row value."""
    for name, tokens in (("kv", 250), ("kv4", 300)):
        _steady(tmp_path / f"runs/{name}.jsonl", tokens)
    results = {
        "options": {"profiles": ["none", "kv"], "vary": {"lmcache_kv_workers": ["4", "8"]}},
        "runs": [
            {
                "profile": label,
                "load": "c4",
                "summary": {"total_tokens_per_s": tps, "failed": 0, "unsent": 0},
                "repeats": [{"repeat": 0, "file": f"runs/{name}.jsonl", "wall_s": 10.0, "meta": {}}],
            }
            for label, name, tps in (("kv", "kv", 1000.0), ("kv lmcache_kv_workers=4", "kv4", 1200.0))
        ],
    }
    t = {x["name"]: x for x in bench.targets(results, 4.0, tmp_path)}
    four = t["tuning: tokens/s kv lmcache_kv_workers=4 vs kv"]
    assert four["value"] == pytest.approx(1.2) and report.evaluate_target(four)["status"] == "met"
    assert t["tuning: tokens/s kv lmcache_kv_workers=8 vs kv"]["value"] is None


def test_routing_interval_resamples_the_passes(tmp_path):
    """Two passes per configuration whose TTFTs differ 2x between passes: the interval over passes
    (then requests) is wider than one over the pooled requests would be."""
    (tmp_path / "runs").mkdir()
    runs = []
    for policy, base in (("round_robin", 0.2), ("cache_aware", 0.1)):
        recs = [
            RequestResult(0.0, 1.0, level, [level], 10, 1, conversation=f"p{k}/u{i}")
            for k, scale in enumerate((1.0, 2.0))
            for i in range(40)
            for level in [base * scale * (1 + i / 40)]
        ]
        f = f"runs/{policy}.jsonl"
        (tmp_path / f).write_text("".join(json.dumps(r.to_dict()) + "\n" for r in recs))
        runs.append(
            {"config": f"2 nodes {policy}", "file": f, "summary": {"failed": 0, "unsent": 0}, "per_node": {}}
        )
    results = {"runs": [], "routing": {"runs": runs, "target": {"measured": 2.0, "hit_rate_higher_on": {}}}}
    row = {x["name"]: x for x in bench.targets(results, None, tmp_path)}[
        "TTFT P95 round-robin vs cache-aware routing (2 nodes)"
    ]
    assert row["lo"] < 1.5 < 2.0 < row["hi"]  # passes 2x apart: the ratio is not known to +-25%


def test_routing_without_the_tier_gets_its_own_row(tmp_path):
    """The routing configurations run again on profile none are labelled apart and get their own
    ratio and interval; the share-of-nodes row stays the inventory tier's."""
    (tmp_path / "runs").mkdir()
    runs = []
    for tier in ("", routing.NO_TIER):
        for policy, lo in (("round_robin", 0.2), ("cache_aware", 0.1)):
            label = routing.labelled(f"2 nodes {policy}", tier)
            f = f"runs/r{len(runs)}.jsonl"
            recs = [RequestResult(0.0, 1.0, lo + lo * i / 49, [lo + lo * i / 49], 10, 1) for i in range(50)]
            (tmp_path / f).write_text("".join(json.dumps(r.to_dict()) + "\n" for r in recs))
            runs.append({"config": label, "file": f, "summary": {"failed": 0, "unsent": 0}, "per_node": {}})
    assert runs[2]["config"] == "2 nodes round_robin, vLLM cache only"
    fig = {"target": "", "measured": 2.0, "hit_rate_higher_on": {"a": True}}
    results = {"runs": [], "routing": {"runs": runs, "target": fig, "target_without_tier": fig}}
    t = {x["name"]: x for x in bench.targets(results, None, tmp_path)}
    row = t["TTFT P95 round-robin vs cache-aware routing (2 nodes, vLLM cache only)"]
    assert row["samples"] == [50, 50] and row["lo"] <= 2.0 <= row["hi"] and "profile none" in row["detail"]
    assert "TTFT P95 round-robin vs cache-aware routing (2 nodes)" in t
