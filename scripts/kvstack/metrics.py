"""Counters the bench reads before and after each run, and their deltas.

Sources, each a flat ``{"name{label=\"v\",...}": value}`` snapshot:

- vLLM's ``/metrics`` per serving endpoint (Prometheus text: prefix-cache queries and hits, external
  hits, prompt tokens by source, queue and prefill time, KV usage);
- LMCache's ``/metrics`` on each serving node, read over SSH (it listens on the node's loopback);
- node_exporter's ``/metrics`` per node (CPU seconds by mode, disk and network bytes);
- the KV server's ``INFO`` (Redis and Kvrocks alike: commands, bytes in/out, keyspace hits;
  memory and keys from Redis' ``used_memory`` and keyspace line; Kvrocks has neither: its data
  size ``used_db_size``, disk use, RSS, and its RocksDB section's key estimate, write stalls,
  block cache hits, flushes and compactions).

Counters (Prometheus counters, histogram ``_sum``/``_count``, and the INFO fields that only grow)
become deltas; gauges keep their value at the end of the run. :func:`summarize` derives the few
figures the report tabulates (hit rates, tokens by source, MB moved, CPU busy).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

#: node_exporter families worth keeping (the rest is noise for a bench).
NODE_PREFIXES = (
    "node_cpu_seconds_total",
    "node_disk_read_bytes_total",
    "node_disk_written_bytes_total",
    "node_disk_io_time_seconds_total",
    "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total",
    "node_memory_MemAvailable_bytes",
    "node_boot_time_seconds",
)
#: INFO fields of Redis/Kvrocks that only grow (deltas); every other numeric field is a gauge.
INFO_COUNTER_PREFIXES = ("total_", "keyspace_", "cmdstat_", "evicted_", "expired_", "rejected_", "sync_")
#: Kvrocks' RocksDB section (apache/kvrocks ``Server::GetRocksDBInfo``): write-stall counts per
#: column family (``level0_file_limit_stop[default]``...), block-cache hits and misses, flushes and
#: compactions only grow; usages, estimates and ``*_per_sec`` are gauges.
KVROCKS_STALL_PREFIXES = ("level0_file_limit_", "pending_compaction_bytes_", "memtable_count_limit_")
KVROCKS_COUNTERS = ("flush_count", "compaction_count")


def _info_counter(key: str) -> bool:
    """True for the INFO fields that only grow."""
    if key.startswith(INFO_COUNTER_PREFIXES + KVROCKS_STALL_PREFIXES) or key in KVROCKS_COUNTERS:
        return True
    return key.startswith("block_cache_") and key.endswith(("_hit", "_miss"))


@dataclass
class Snapshot:
    """Values of one source at one moment, with the names that are counters."""

    values: dict[str, float] = field(default_factory=dict)
    counters: set[str] = field(default_factory=set)
    error: str | None = None


def _key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


#: histograms whose buckets are kept (for :func:`histogram_quantile`); every other one keeps only
#: its ``_sum`` and ``_count``
KEEP_BUCKETS = ("vllm:time_to_first_token_seconds_bucket",)


def parse_prometheus(text: str, prefixes: Iterable[str] | None = None) -> Snapshot:
    """Parse Prometheus text; histogram buckets are dropped but those of :data:`KEEP_BUCKETS`,
    ``_sum``/``_count`` kept as counters."""
    keep = tuple(prefixes) if prefixes else None
    snap = Snapshot()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if (s.name.endswith("_bucket") and s.name not in KEEP_BUCKETS) or s.name.endswith("_created"):
                continue
            if keep and not s.name.startswith(keep):
                continue
            key = _key(s.name, s.labels)
            snap.values[key] = float(s.value)
            if fam.type in ("counter", "histogram", "summary"):
                snap.counters.add(key)
    return snap


def http_get(url: str, timeout: float = 10.0, headers: dict[str, str] | None = None) -> str:
    """GET *url* and return the body as text."""
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode()


def scrape(
    url: str, prefixes: Iterable[str] | None = None, headers: dict[str, str] | None = None
) -> Snapshot:
    """Scrape a Prometheus endpoint; a failure becomes a snapshot with ``error`` set."""
    try:
        return parse_prometheus(http_get(url, headers=headers), prefixes)
    except Exception as e:  # unreachable exporter: the run goes on, the report says what is missing
        return Snapshot(error=f"{url}: {type(e).__name__}: {e}")


def parse_info(info: dict[str, Any]) -> Snapshot:
    """Flatten redis-py's ``INFO`` dict (nested for cmdstat_* and db*) into a snapshot."""
    snap = Snapshot()

    def put(key: str, value: Any, counter: bool) -> None:
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, int | float):
            snap.values[key] = float(value)
            if counter:
                snap.counters.add(key)

    for k, v in info.items():
        counter = _info_counter(k)
        if isinstance(v, dict):
            for sub, x in v.items():
                put(f"{k}.{sub}", x, counter and sub in ("calls", "usec", "rejected_calls", "failed_calls"))
        else:
            put(k, v, counter)
    return snap


def delta(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Counter deltas (a counter that went down was reset: its new value counts) and gauge values."""
    out: dict[str, float] = {}
    for k, v in after.values.items():
        if k in after.counters:
            prev = before.values.get(k, 0.0)
            out[k] = v - prev if v >= prev else v
        else:
            out[k] = v
    return out


def merge(
    runs: list[dict[str, dict[str, float]]], counters: dict[str, set[str]]
) -> dict[str, dict[str, float]]:
    """Per-source deltas of several runs as one: counters add up, gauges keep the last value."""
    out: dict[str, dict[str, float]] = {}
    for d in runs:
        for src, values in d.items():
            tgt = out.setdefault(src, {})
            for k, v in values.items():
                tgt[k] = tgt.get(k, 0.0) + v if k in counters.get(src, ()) else v
    return out


def total(d: dict[str, float], name: str, **labels: str) -> float:
    """Sum of every series of *name* whose labels include *labels*."""
    out = 0.0
    for k, v in d.items():
        base, _, rest = k.partition("{")
        if base != name:
            continue
        if all(f'{lk}="{lv}"' in rest for lk, lv in labels.items()):
            out += v
    return out


def histogram_quantile(d: dict[str, float], name: str, q: float) -> float | None:
    """The *q*-quantile (0..1) of histogram *name* (``<name>_bucket`` deltas in *d*, summed over
    every other label) as Prometheus' ``histogram_quantile`` estimates it: linear within the
    bucket it falls in; None without observations, the highest finite bound when it falls in
    ``+Inf``."""
    by_le: dict[float, float] = {}
    for k, v in d.items():
        base, _, rest = k.partition("{")
        if base != f"{name}_bucket":
            continue
        le = next(
            (x.split("=", 1)[1].strip('"') for x in rest.rstrip("}").split(",") if x.startswith("le=")), None
        )
        if le is not None:
            by_le[float(le)] = by_le.get(float(le), 0.0) + v
    bounds = sorted(by_le)
    if not bounds or by_le[bounds[-1]] <= 0:
        return None
    rank, lower, below = q * by_le[bounds[-1]], 0.0, 0.0
    for le in bounds:
        if by_le[le] >= rank:
            if le == float("inf"):
                return lower
            inside = by_le[le] - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, by_le[le]
    return lower


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def summarize(deltas: dict[str, dict[str, float]], kinds: dict[str, str]) -> dict[str, float | int | None]:
    """The report's figures from per-source deltas; *kinds* maps a source name to vllm, lmcache,
    node or kv. Sums over sources of one kind (several serving nodes add up)."""

    def of(kind: str) -> list[dict[str, float]]:
        return [d for src, d in deltas.items() if kinds.get(src) == kind]

    def s(kind: str, name: str, **labels: str) -> float:
        return sum(total(d, name, **labels) for d in of(kind))

    out: dict[str, float | int | None] = {}
    if of("vllm"):
        out["vLLM prefix-cache hit rate"] = _ratio(
            s("vllm", "vllm:prefix_cache_hits_total"), s("vllm", "vllm:prefix_cache_queries_total")
        )
        out["external (LMCache) hit rate"] = _ratio(
            s("vllm", "vllm:external_prefix_cache_hits_total"),
            s("vllm", "vllm:external_prefix_cache_queries_total"),
        )
        for src in ("local_compute", "local_cache_hit", "external_kv_transfer"):
            out[f"prompt tokens: {src}"] = int(s("vllm", "vllm:prompt_tokens_by_source_total", source=src))
        q = s("vllm", "vllm:request_queue_time_seconds_count")
        out["queue time mean ms"] = _ms(_ratio(s("vllm", "vllm:request_queue_time_seconds_sum"), q))
        p = s("vllm", "vllm:request_prefill_time_seconds_count")
        out["prefill time mean ms"] = _ms(_ratio(s("vllm", "vllm:request_prefill_time_seconds_sum"), p))
        out["preemptions"] = int(s("vllm", "vllm:num_preemptions_total"))
    if of("lmcache"):
        out["LMCache lookup hit rate"] = _ratio(
            s("lmcache", "lmcache_mp_lookup_hit_tokens_total"),
            s("lmcache", "lmcache_mp_lookup_requested_tokens_total"),
        )
        out["LMCache L1 hit tokens"] = int(s("lmcache", "lmcache_mp_lookup_hit_l1_tokens_total"))
        out["LMCache L2 hit tokens"] = int(s("lmcache", "lmcache_mp_lookup_hit_l2_tokens_total"))
        out["LMCache chunks stored to L2"] = int(
            s("lmcache", "lmcache_mp_l2_store_completed_objects_chunks_total")
        )
        # every throughput histogram LMCache keeps (L2 store, L2 load/prefetch, ...): its mean
        names = {
            k.partition("{")[0][: -len("_sum")]
            for d in of("lmcache")
            for k in d
            if k.partition("{")[0].endswith("_throughput_GB_per_second_sum")
        }
        for name in sorted(names):
            what = (
                name.removeprefix("lmcache_mp_").removesuffix("_throughput_GB_per_second").replace("_", " ")
            )
            out[f"LMCache {what} GB/s mean"] = _ratio(
                s("lmcache", name + "_sum"), s("lmcache", name + "_count")
            )
    if of("kv"):
        out.update(kv_figures(of("kv")))
    if of("node"):
        busy = idle = 0.0
        nodes = per_kernel(of("node"))
        for d in nodes:
            for k, v in d.items():
                if not k.startswith("node_cpu_seconds_total"):
                    continue
                if 'mode="idle"' in k:
                    idle += v
                else:
                    busy += v
        out["CPU busy"] = _ratio(busy, busy + idle)
        for what in ("written", "read"):
            name = f"node_disk_{what}_bytes_total"
            out[f"disk MB {what}"] = round(sum(total(d, name) for d in nodes) / 1e6, 1)
    return out


def per_kernel(nodes: list[dict[str, float]]) -> list[dict[str, float]]:
    """node_exporter's deltas once per kernel: nodes that share one (containers, the lab's nspawn
    nodes) read the same /proc/stat and /proc/diskstats, so their CPU seconds and disk bytes are
    the host's, counted once. Same kernel = same ``node_boot_time_seconds``; a node without it
    counts on its own."""
    seen: set[int] = set()
    out = []
    for d in nodes:
        boot = d.get("node_boot_time_seconds")
        if boot is not None:
            if round(boot) in seen:
                continue
            seen.add(round(boot))
        out.append(d)
    return out


def kv_figures(kv: list[dict[str, float]]) -> dict[str, float | int | None]:
    """The KV servers' figures (summed over servers) from Redis' INFO or Kvrocks'; with several
    (a sharded tier) also the bytes each member received."""

    def s(name: str) -> float:
        return sum(total(d, name) for d in kv)

    def prefixed(prefixes: tuple[str, ...], suffixes: tuple[str, ...] = ("",)) -> float:
        return sum(v for d in kv for k, v in d.items() if k.startswith(prefixes) and k.endswith(suffixes))

    out: dict[str, float | int | None] = {
        "KV server commands": int(s("total_commands_processed")),
        "KV server MB in": round(s("total_net_input_bytes") / 1e6, 1),
        "KV server MB out": round(s("total_net_output_bytes") / 1e6, 1),
    }
    if len(kv) > 1:  # a sharded tier: how the traffic spread over its members (kv_access_nodes' order)
        for i, d in enumerate(kv, 1):
            out[f"KV shard {i} MB in"] = round(total(d, "total_net_input_bytes") / 1e6, 1)
    if not any("used_db_size" in d for d in kv):  # Redis: data in RAM, exact key count
        out["KV server used MB"] = round(s("used_memory") / 2**20, 1)
        out["KV server keys"] = int(prefixed(("db",), (".keys",)))
        return out
    # Kvrocks: INFO's keyspace line counts keys only after a DBSIZE SCAN; RocksDB's estimate of
    # the metadata column family (where string values live) is current.
    out["KV server used MB"] = round(s("used_db_size") / 2**20, 1)
    out["KV server disk used MB"] = round(s("used_disk_size") / 2**20, 1)
    out["KV server RSS MB"] = round(s("used_memory_rss") / 2**20, 1)
    out["KV server keys (estimate)"] = int(s("estimate_keys[metadata]"))
    out["KV server write stalls"] = int(prefixed(KVROCKS_STALL_PREFIXES))
    hits, misses = s("block_cache_hit"), s("block_cache_miss")
    out["KV server block cache hit rate"] = _ratio(hits, hits + misses)
    out["KV server flushes"] = int(s("flush_count"))
    out["KV server compactions"] = int(s("compaction_count"))
    return out


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1000


@dataclass
class Source:
    """One place to read counters from: a name, its kind, and how to read it."""

    name: str
    kind: str
    read: Callable[[], Snapshot]


def snapshot_all(sources: Iterable[Source]) -> dict[str, Snapshot]:
    """Read every source now."""
    return {s.name: s.read() for s in sources}


def resets(before: Snapshot, after: Snapshot) -> list[str]:
    """The counters that went down between the snapshots (their source restarted)."""
    return sorted(k for k, v in after.values.items() if k in after.counters and v < before.values.get(k, 0.0))


def deltas_between(
    before: dict[str, Snapshot], after: dict[str, Snapshot]
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Per-source deltas, and notes: the errors of sources that could not be read, and sources
    whose counters were reset during the run (a restart: their deltas count only from it)."""
    out, errors = {}, []
    for name, snap in after.items():
        prev = before.get(name)
        err = snap.error or (prev.error if prev else f"{name}: no snapshot before the run")
        if err:
            errors.append(err)
            continue
        out[name] = delta(prev, snap)  # type: ignore[arg-type]
        if gone := resets(prev, snap):  # type: ignore[arg-type]
            errors.append(
                f"{name}: {len(gone)} counters went down during the run (restarted? e.g. {gone[0]}); "
                "their deltas count from the restart only"
            )
    return out, errors


PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")


def prompt_sources(d: dict[str, float]) -> dict[str, Any]:
    """Where a vLLM engine's prompt tokens came from, from its deltas
    (``vllm:prompt_tokens_by_source``): its own prefix cache, LMCache (an external KV transfer) or
    computed, as shares of the prompt tokens (None without traffic)."""
    src = {s: total(d, "vllm:prompt_tokens_by_source_total", source=s) for s in PROMPT_SOURCES}
    n = sum(src.values())
    return {
        "prompt_tokens": int(n),
        "vllm_hit_rate": src["local_cache_hit"] / n if n else None,
        "lmcache_hit_rate": src["external_kv_transfer"] / n if n else None,
        "hit_rate": (src["local_cache_hit"] + src["external_kv_transfer"]) / n if n else None,
    }
