"""`fab run-bench` on the lab, at its smallest: two tier profiles switched through site.yml, the
ceiling (both again with vLLM's own cache holding the working set), the TTFT probe, the KV data
path from a serving node, the RocksDB engine bench and the routing runs (1 node, 2 nodes
round-robin, 2 nodes cache-aware). Asserts on counters and outcomes (requests served, where
tokens came from, rows written, no secret in the results), never on timings; the ratios it
measures go to its report, with their intervals."""

from __future__ import annotations

import json
import subprocess

import pytest

from kvstack import REPO, bench, inventory

pytestmark = pytest.mark.last

# 8 users whose 2.6k-token round-0 prompts outgrow vLLM's 16k-token cache between their rounds
USERS, ROUNDS = 8, 2


@pytest.fixture(scope="module")
def bench_run(up_lab, tmp_path_factory, request):
    """One small bench run: none and kv, the ceiling, the probe, data path and RocksDB (and the
    AIPerf cross-check and the routing runs without the shared tier with --bench-full)."""
    full = request.config.getoption("--bench-full")
    opts = bench.BenchOptions(
        crosscheck=full,
        routing_without_tier=full,
        routing_passes=2,
        profiles=("none", "kv"),
        users=USERS,
        rounds=ROUNDS,
        history_tokens=2048,
        question_tokens=32,
        answer_tokens=4,
        probe_n=2,
        datapath_sizes=(256 * 1024, 1 << 20),
        datapath_n=4,
        rocksdb_sizes=(1 << 20,),
        rocksdb_n=4,
        results_dir=tmp_path_factory.mktemp("results"),
    )
    out = bench.run_bench(opts)
    return out, json.loads((out / "results.json").read_text())


CEIL = ", ample vLLM cache"


def test_matrix_ran_every_request(bench_run):
    _, res = bench_run
    assert not res["interrupted"] and res["plan"]["profiles"] == ["none", "kv"]
    assert res["plan"]["ceiling"] == ["none" + CEIL, "kv" + CEIL]
    runs = {r["profile"]: r for r in res["runs"]}
    assert set(runs) == {"none", "kv", "none" + CEIL, "kv" + CEIL}
    for r in runs.values():
        s = r["summary"]
        assert s["requests"] == USERS * ROUNDS and s["failed"] == 0 and s["unsent"] == 0
        # vLLM reported each chunk's tokens: ITL per token, TPOT for every multi-token answer
        assert s["itl_per"] == "token" and s["tpot"]["count"] == USERS * ROUNDS
        assert s["itl"]["count"] <= s["output_tokens"] - s["completed"]


def test_tokens_came_from_the_tier_the_profile_has(bench_run):
    _, res = bench_run
    runs = {r["profile"]: r["metrics"] for r in res["runs"]}
    assert runs["none"]["prompt tokens: external_kv_transfer"] == 0
    assert "LMCache L2 hit tokens" not in runs["none"]  # no LMCache server in profile none
    # kv: a user's round 2 reuses its round-1 prompt (10 whole chunks; vLLM still holds the shared
    # system prompt) from the KV server once the other users' turns pushed it out of vLLM's cache:
    # the first users' at least (the last ones may still be in vLLM's cache)
    assert runs["kv"]["prompt tokens: external_kv_transfer"] >= 2 * 2048
    assert runs["kv"]["LMCache L2 hit tokens"] >= 2 * 2048
    assert runs["kv"]["KV server MB in"] > 0 and runs["kv"]["LMCache chunks stored to L2"] > 0
    # the ceiling: vLLM's own cache holds the working set, so round 2 comes from it, not the tier
    hits = "prompt tokens: local_cache_hit"
    assert runs["none" + CEIL][hits] > runs["none"][hits]
    assert (
        res["ceiling"]["kv_blocks"] * res["workload"]["block_size"] >= res["workload"]["working_set_tokens"]
    )


def test_probe_phases_served_where_they_claim(bench_run):
    _, res = bench_run
    p = res["ttft_probe"]
    assert p["failed"] == 0 and all(len(v) == 2 for v in p["ttft_s"].values())
    src = p["tokens_by_source"]
    assert src["cold"]["external_kv_transfer"] == 0 and src["cold"]["local_cache_hit"] == 0
    assert src["vLLM prefix-cache hit"]["local_cache_hit"] > 0
    kv = src["KV-server tier hit"]
    assert kv["local_cache_hit"] == 0 and kv["external_kv_transfer"] >= 2 * (4096 - 256)
    assert kv["LMCache L2 hit"] >= 2 * (4096 - 256) and kv["LMCache L1 hit"] == 0


def test_datapath_and_rocksdb_rows(bench_run):
    _, res = bench_run
    paths = {(r["path"], r["value_bytes"]) for r in res["kv_datapath"]}
    for size in (256 * 1024, 1 << 20):
        for path in (
            "raw RESP SET",
            "raw RESP GET (reused buffer)",
            "raw RESP SET (parallel, pipelined)",
            "raw RESP GET (parallel, pipelined)",
            "LMCache L2 store",
            "LMCache L2 retrieve",
        ):
            assert (path, size) in paths
    assert {("memcpy", None), ("loopback TCP", None)} <= paths
    assert {(r["profile"], r["medium"]) for r in res["rocksdb"]} == {
        (p, m) for p in ("upstream", "nvme_large_values", "dram") for m in ("disk", "tmpfs")
    }
    names = {t["name"]: t for t in res["targets"]}
    assert names["LMCache L2 retrieve vs raw RESP GET"]["value"] is not None
    for name in ("TTFT P50 cold vs KV-server tier", "TTFT P50 KV-server tier vs vLLM prefix-cache hit"):
        # an interval from the probe's requests, and every phase served where it claims
        t = names[name]
        assert t["value"] is not None and t["lo"] <= t["value"] <= t["hi"] and t["failures"] == 0
    for name in (
        "tokens/s kv vs the ceiling",
        "LMCache overhead: tokens/s kv vs none, both with ample vLLM cache",
    ):
        t = names[name]
        # resampled by conversation: one sample per user on each side
        assert t["value"] is not None and t["lo"] <= t["hi"] and t["samples"] == [USERS, USERS]


def test_aiperf_replayed_every_request(bench_run, request):
    """AIPerf sent the same requests and served them all; the figures it measured are in the
    report beside ours (agreement is the report's to state, not this test's)."""
    if not request.config.getoption("--bench-full"):
        pytest.skip("the AIPerf cross-check runs with --bench-full")
    out, res = bench_run
    cc = res["crosscheck"]
    assert cc["requests"]["ours"] == cc["requests"]["aiperf"] == USERS * ROUNDS
    assert cc["failed"] == {"ours": 0, "aiperf": 0}
    assert all(r["ours_s"] and r["aiperf_s"] for r in cc["rows"])
    assert all(v for v in cc["server_ttft_mean_s"].values())
    assert all(q["p50"] and q["p95"] for q in cc["server_ttft_s"].values())  # from its buckets
    assert "## Cross-check with AIPerf" in (out / "report.md").read_text()


def test_report_and_raw_data_written(bench_run):
    out, _ = bench_run
    report = (out / "report.md").read_text()
    for heading in (
        "## Targets",
        "## Throughput per profile",
        "## TTFT of a 4,096-token context",
        "## KV data path",
    ):
        assert heading in report
    assert "## Missing" in report and "Nothing: every planned" in report
    for png in ("throughput.png", "latency_c4.png", "kv_datapath.png", "rocksdb.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert len((out / "runs" / "kv__c4__r0.jsonl").read_text().splitlines()) == USERS * ROUNDS


def test_no_secret_in_results(bench_run):
    out, _ = bench_run
    inv = inventory.load(REPO / "inventory" / "lab")
    password = inv.group_vars("kv")["kv_password"]
    assert len(password) >= 12
    for f in out.rglob("*"):
        if f.is_file():
            assert password.encode() not in f.read_bytes(), f
    assert not list(out.parent.glob("kvstack-endpoints-*"))


def test_nodes_back_on_the_inventory_profile(bench_run, testinfra_backend):
    node = testinfra_backend("lab-serve1")
    unit = node.check_output("systemctl cat lmcache.service")
    assert "--l2-adapter" in unit and "skip_l1" not in unit  # the inventory's dram+kv, not kv
    assert node.service("vllm@main").is_running


def test_routing_runs_per_configuration(bench_run, request):
    _, res = bench_run
    runs = {r["config"]: r for r in res["routing"]["runs"]}
    configs = ["1 node", "2 nodes round_robin", "2 nodes cache_aware"]
    if request.config.getoption("--bench-full"):  # again with every serving node on profile none
        configs += [f"{c}, vLLM cache only" for c in configs]
        for c in configs[3:]:
            assert runs[c]["tier"] == "vLLM cache only"
            assert all(n["lmcache_hit_rate"] in (0, None) for n in runs[c]["per_node"].values())
    assert list(runs) == configs
    for r in runs.values():  # two passes of fresh conversations per configuration
        assert r["summary"]["requests"] == 2 * USERS * ROUNDS and r["summary"]["failed"] == 0
        # the router's per-backend counter accounts for every request
        assert sum(n["requests"] for n in r["per_node"].values()) == 2 * USERS * ROUNDS
    assert runs["1 node"]["per_node"]["lab-serve2"]["requests"] == 0
    assert all(n["requests"] > 0 for n in runs["2 nodes round_robin"]["per_node"].values())


def test_cache_aware_keeps_conversations_where_their_prefix_is(bench_run):
    """8 users' 2.6k-token histories fit the two nodes' vLLM caches when each stays on one node:
    cache-aware routing serves round 2 from vLLM's own cache; round-robin sends it to the other
    node, where it comes from LMCache instead."""
    _, res = bench_run
    runs = {r["config"]: r for r in res["routing"]["runs"]}

    def local_hits(config: str) -> float:
        return sum(n["prompt_tokens"] * (n["vllm_hit_rate"] or 0) for n in runs[config]["per_node"].values())

    assert local_hits("2 nodes cache_aware") > local_hits("2 nodes round_robin")
    assert res["routing"]["target"] is not None  # stated in the report, met or not


def test_router_back_on_the_inventory_policy(bench_run, testinfra_backend):
    router = testinfra_backend("lab-kv1")
    exec_start = router.check_output("systemctl show -p ExecStart --value vllm-router")
    assert "--policy cache_aware" in exec_start and "10.77.0.12:8000" in exec_start


def test_bad_arguments_rejected_before_anything(up_lab):
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "fab"), "run-bench", "--profiles", "none,ssd"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "--profiles" in proc.stderr and "ssd" in proc.stderr
    assert "running site.yml" not in proc.stderr
    with pytest.raises(bench.BenchError, match="--node"):
        bench.run_bench(bench.BenchOptions(node="lab-kv1", results_dir=REPO / "results"))
