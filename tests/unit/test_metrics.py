"""Counter collection (kvstack.metrics): Prometheus text and Redis INFO parsing, deltas across a
counter reset, merging repeats, and the report's derived figures against hand-computed values."""

from __future__ import annotations

import pytest

from kvstack import metrics as m

VLLM_BEFORE = """\
# HELP vllm:prefix_cache_queries Prefix cache queries.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="tiny"} 1000.0
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 100.0
# TYPE vllm:external_prefix_cache_queries_total counter
vllm:external_prefix_cache_queries_total{engine="0",model_name="tiny"} 0.0
# TYPE vllm:external_prefix_cache_hits_total counter
vllm:external_prefix_cache_hits_total{engine="0",model_name="tiny"} 0.0
# TYPE vllm:prompt_tokens_by_source_total counter
vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny",source="local_compute"} 900.0
vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny",source="external_kv_transfer"} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.5
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_bucket{engine="0",le="0.1",model_name="tiny"} 3.0
vllm:request_queue_time_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 4.0
vllm:request_queue_time_seconds_count{engine="0",model_name="tiny"} 4.0
vllm:request_queue_time_seconds_sum{engine="0",model_name="tiny"} 0.4
"""

VLLM_AFTER = (
    VLLM_BEFORE.replace("} 1000.0", "} 3000.0")  # 2000 more queries
    .replace(
        'prefix_cache_hits_total{engine="0",model_name="tiny"} 100.0',
        'prefix_cache_hits_total{engine="0",model_name="tiny"} 600.0',
    )
    .replace(
        'external_prefix_cache_queries_total{engine="0",model_name="tiny"} 0.0',
        'external_prefix_cache_queries_total{engine="0",model_name="tiny"} 1500.0',
    )
    .replace(
        'external_prefix_cache_hits_total{engine="0",model_name="tiny"} 0.0',
        'external_prefix_cache_hits_total{engine="0",model_name="tiny"} 1200.0',
    )
    .replace('source="local_compute"} 900.0', 'source="local_compute"} 1200.0')
    .replace('source="external_kv_transfer"} 0.0', 'source="external_kv_transfer"} 1200.0')
    .replace("} 0.5", "} 0.75")
    .replace('_count{engine="0",model_name="tiny"} 4.0', '_count{engine="0",model_name="tiny"} 14.0')
    .replace('_sum{engine="0",model_name="tiny"} 0.4', '_sum{engine="0",model_name="tiny"} 1.4')
)


def node(idle: float, user: float, written: float, boot: float | None = None) -> str:
    """node_exporter text with these counter values (and boot time, when given)."""
    booted = "" if boot is None else f"# TYPE node_boot_time_seconds gauge\nnode_boot_time_seconds {boot}\n"
    return booted + (
        "# TYPE node_cpu_seconds_total counter\n"
        f'node_cpu_seconds_total{{cpu="0",mode="idle"}} {idle}\n'
        f'node_cpu_seconds_total{{cpu="0",mode="user"}} {user}\n'
        "# TYPE node_disk_written_bytes_total counter\n"
        f'node_disk_written_bytes_total{{device="sda"}} {written}\n'
        "# TYPE node_load1 gauge\nnode_load1 1.5\n"
    )


def test_parse_prometheus_counters_gauges_histograms():
    s = m.parse_prometheus(VLLM_BEFORE)
    key = 'vllm:prefix_cache_queries_total{engine="0",model_name="tiny"}'
    assert s.values[key] == 1000.0 and key in s.counters
    gauge = 'vllm:kv_cache_usage_perc{engine="0",model_name="tiny"}'
    assert s.values[gauge] == 0.5 and gauge not in s.counters
    assert not any("_bucket" in k for k in s.values)  # buckets dropped, sum/count kept as counters
    assert 'vllm:request_queue_time_seconds_sum{engine="0",model_name="tiny"}' in s.counters


def test_prefix_filter_matches_sample_names():
    s = m.parse_prometheus(node(1, 2, 3), m.NODE_PREFIXES)
    assert set(s.values) == {
        'node_cpu_seconds_total{cpu="0",mode="idle"}',
        'node_cpu_seconds_total{cpu="0",mode="user"}',
        'node_disk_written_bytes_total{device="sda"}',
    }


def test_delta_and_reset():
    before = m.parse_prometheus(node(100, 50, 1000))
    after = m.parse_prometheus(node(130, 20, 5000))  # user counter was reset
    d = m.delta(before, after)
    assert d['node_cpu_seconds_total{cpu="0",mode="idle"}'] == 30
    assert d['node_cpu_seconds_total{cpu="0",mode="user"}'] == 20  # a reset counts from zero
    assert d["node_load1"] == 1.5  # a gauge keeps its value


def test_summarize_hand_computed():
    vd = m.delta(m.parse_prometheus(VLLM_BEFORE), m.parse_prometheus(VLLM_AFTER))
    nd = m.delta(
        m.parse_prometheus(node(100, 50, 0)),
        m.parse_prometheus(node(130, 140, 2_000_000)),
    )
    out = m.summarize({"vllm@a": vd, "node@a": nd}, {"vllm@a": "vllm", "node@a": "node"})
    assert out["vLLM prefix-cache hit rate"] == pytest.approx(500 / 2000)
    assert out["external (LMCache) hit rate"] == pytest.approx(1200 / 1500)
    assert out["prompt tokens: local_compute"] == 300
    assert out["prompt tokens: external_kv_transfer"] == 1200
    assert out["queue time mean ms"] == pytest.approx(1000 * 1.0 / 10)
    assert out["CPU busy"] == pytest.approx(90 / 120)
    assert out["disk MB written"] == 2.0
    # two serving nodes add up
    two = m.summarize({"vllm@a": vd, "vllm@b": vd}, {"vllm@a": "vllm", "vllm@b": "vllm"})
    assert two["prompt tokens: external_kv_transfer"] == 2400
    assert two["external (LMCache) hit rate"] == pytest.approx(0.8)


def test_nodes_sharing_a_kernel_count_once():
    """Two nspawn nodes on one host (same boot time) read the host's disks and CPUs: counted once;
    a node on its own kernel (another boot time) adds its own."""

    def nd(boot: float) -> dict[str, float]:
        before, after = node(100, 50, 0, boot), node(130, 140, 2_000_000, boot)
        parse = m.parse_prometheus
        return m.delta(parse(before, m.NODE_PREFIXES), parse(after, m.NODE_PREFIXES))

    kinds = {"node@a": "node", "node@b": "node", "node@c": "node"}
    shared = m.summarize({"node@a": nd(1.7e9), "node@b": nd(1.7e9)}, kinds)
    assert shared["disk MB written"] == 2.0 and shared["CPU busy"] == pytest.approx(90 / 120)
    apart = m.summarize({"node@a": nd(1.7e9), "node@b": nd(1.7e9), "node@c": nd(1.6e9)}, kinds)
    assert apart["disk MB written"] == 4.0


def test_info_and_merge():
    info = {
        "total_commands_processed": 10,
        "total_net_input_bytes": 5_000_000,
        "used_memory": 3 * 2**20,
        "redis_version": "7.0.15",
        "cmdstat_get": {"calls": 4, "usec": 400, "usec_per_call": 100.0},
        "db0": {"keys": 7, "expires": 0},
    }
    s = m.parse_info(info)
    assert "redis_version" not in s.values
    assert s.values["cmdstat_get.calls"] == 4 and "cmdstat_get.calls" in s.counters
    assert "cmdstat_get.usec_per_call" not in s.counters and "db0.keys" not in s.counters
    zero = m.parse_info({k: 0 if not isinstance(v, dict) else dict.fromkeys(v, 0) for k, v in info.items()})
    d = m.delta(zero, s)
    merged = m.merge([{"kv": d}, {"kv": d}], {"kv": s.counters})
    assert merged["kv"]["total_commands_processed"] == 20  # counters add over repeats
    assert merged["kv"]["used_memory"] == 3 * 2**20  # gauges keep the last value
    out = m.summarize(merged, {"kv": "kv"})
    assert (out["KV server commands"], out["KV server MB in"], out["KV server used MB"]) == (20, 10.0, 3.0)


def test_deltas_between_reports_unreadable_sources():
    ok = m.parse_prometheus(node(1, 1, 1))
    bad = m.Snapshot(error="lmcache@a: curl exit 7")
    deltas, errors = m.deltas_between({"n": ok, "l": bad}, {"n": ok, "l": bad})
    assert set(deltas) == {"n"} and errors == ["lmcache@a: curl exit 7"]
    assert m.scrape("http://127.0.0.1:9/metrics").error  # nothing listens on the discard port


def test_a_counter_reset_mid_run_is_said():
    """A source restarted during the run: its deltas count from the restart, and the notes say so
    (the report lists it), instead of a silently smaller figure."""
    before = {"node@a": m.parse_prometheus(node(100, 50, 1000))}
    after = {"node@a": m.parse_prometheus(node(130, 20, 5000))}
    deltas, notes = m.deltas_between(before, after)
    assert deltas["node@a"]['node_cpu_seconds_total{cpu="0",mode="user"}'] == 20
    assert len(notes) == 1 and notes[0].startswith("node@a: 1 counters went down during the run")
    assert 'mode="user"' in notes[0]
    assert m.deltas_between(before, before)[1] == []  # no reset, no note
