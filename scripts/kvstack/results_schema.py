"""``results.json``'s schema, in one place: its top-level keys (:class:`ResultsJson`) and the rows
they hold, as ``TypedDict`` types.

The bench writes the file (:class:`kvstack.bench.results.Results`, whose ``put`` takes only the
keys of :class:`ResultsJson`: :func:`check_key`); the report reads it (:func:`load`, which
:func:`kvstack.report.write_report` calls). At every level, the keys without ``NotRequired`` are
the ones the bench always writes and the report cannot do without; the others are what a failed or
interrupted run may lack (the report lists what is missing and renders the rest). A file is
checked against these types as a whole when it is loaded: the required keys there, every known key
of the type it names. Keys the schema does not know are kept and not checked (older files load).

Kept apart from :mod:`kvstack.bench` (which imports :mod:`kvstack.report`) so the report reads it
without the bench package. Types only from the standard library: no other module is imported.
"""

import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

#: what one run's load summary is: :meth:`kvstack.stats.Summary.to_dict` (that dataclass is its
#: schema: requests, completed, failed, tokens/s, ``ttft``/``itl``/``e2e`` distributions, ...)
Summary = dict[str, Any]


class RepeatEntry(TypedDict):
    """One repeat of a matrix cell (its raw requests and counter deltas are in ``file``'s stem)."""

    repeat: int
    file: str
    wall_s: float
    #: :meth:`kvstack.loadgen.RunResult.meta` and the load config (``load``)
    meta: dict[str, Any]


class RunEntry(TypedDict):
    """``runs[]``: one (profile, load) cell of the matrix, merged over its repeats."""

    profile: str
    load: str
    summary: Summary
    repeats: NotRequired[list[RepeatEntry]]
    #: the report's figures from the counters (:func:`kvstack.metrics.summarize`)
    metrics: NotRequired[dict[str, float | None]]


class DatapathRow(TypedDict):
    """``kv_datapath[]`` (:mod:`kvstack_node.datapath`): GB/s of one path at one value size; the
    physical references (memcpy, loopback TCP) have ``value_bytes`` None."""

    path: str
    value_bytes: int | None
    gb_per_s: float
    op: NotRequired[str]
    n: NotRequired[int]
    p50_ms: NotRequired[float | None]
    p99_ms: NotRequired[float | None]
    where: NotRequired[str]
    #: LMCache L2 rows: keys per task and the C++ client's connections
    batch: NotRequired[int]
    num_workers: NotRequired[int]


class RocksdbRow(TypedDict):
    """``rocksdb[]`` (:mod:`kvstack.rocksbench`): one Kvrocks profile on one medium at one value size."""

    profile: str
    value_bytes: int
    put_gb_per_s: float
    get_gb_per_s: float
    medium: NotRequired[str]
    dir: NotRequired[str]
    n: NotRequired[int]
    put_p50_ms: NotRequired[float | None]
    put_p99_ms: NotRequired[float | None]
    get_p50_ms: NotRequired[float | None]
    get_p99_ms: NotRequired[float | None]
    flush_s: NotRequired[float]
    #: puts and their flush together (put_gb_per_s leaves the flush out)
    put_flush_gb_per_s: NotRequired[float]
    compactions_settled_s: NotRequired[float]
    cold_reads: NotRequired[bool]
    #: RocksDB's statistics and properties (block cache hits, read amplification, stalls, ...)
    stats: NotRequired[dict[str, Any]]
    #: the profile's Kvrocks keys not applied to RocksDB
    unmapped: NotRequired[list[str]]


class TtftProbe(TypedDict):
    """``ttft_probe`` and ``ttft_probes[label]`` (:mod:`kvstack.bench.probe`); per phase (cold,
    vLLM prefix-cache hit, KV-server tier hit)."""

    prompt_tokens: int
    n: int
    failed: int
    ttft_s: dict[str, list[float]]
    ttft_p50_s: dict[str, float | None]
    #: where the phase's prompt tokens came from (vLLM's and LMCache's counters)
    tokens_by_source: dict[str, dict[str, float]]


class NodeStats(TypedDict):
    """Per serving node (routing) or worker (Dynamo): requests and where prompt tokens came from
    (:func:`kvstack.metrics.prompt_sources`; rates None without traffic)."""

    requests: int
    prompt_tokens: int
    vllm_hit_rate: float | None
    lmcache_hit_rate: float | None
    hit_rate: float | None


class RoutingRun(TypedDict):
    """``routing.runs[]`` (:func:`kvstack.routing.run_config`): one router configuration."""

    config: str
    summary: Summary
    per_node: dict[str, NodeStats]
    nodes: NotRequired[int]
    backend_hosts: NotRequired[list[str]]
    policy: NotRequired[str]
    #: "inventory" (the inventory's tier profile) or "vLLM cache only" (profile none)
    tier: NotRequired[str]
    file: NotRequired[str]
    counter_errors: NotRequired[list[str]]


class RoutingTarget(TypedDict):
    """``routing.target`` (:func:`kvstack.routing.target`)."""

    target: str
    measured: float | None
    hit_rate_higher_on: dict[str, bool]


class Routing(TypedDict):
    """``routing`` (:func:`kvstack.routing.run_routing`)."""

    runs: list[RoutingRun]
    router: NotRequired[str]
    missing: NotRequired[list[str]]
    switch_s: NotRequired[list[float]]
    #: None until both two-node configurations ran
    target: NotRequired[RoutingTarget | None]
    #: the same, every serving node on profile none (vLLM's own cache only)
    target_without_tier: NotRequired[RoutingTarget | None]


class DynamoRun(TypedDict):
    """``dynamo.runs[]`` (:func:`kvstack.dynamo_bench.run_config`): one Dynamo configuration."""

    config: str
    summary: Summary
    per_worker: dict[str, NodeStats]
    workers: NotRequired[int]
    worker_hosts: NotRequired[list[str]]
    lmcache: NotRequired[bool]
    file: NotRequired[str]
    lmcache_hit_tokens: NotRequired[int]
    counter_errors: NotRequired[list[str]]


class Dynamo(TypedDict):
    """``dynamo`` (:func:`kvstack.dynamo_bench.run_dynamo`)."""

    runs: list[DynamoRun]
    frontend: NotRequired[str]
    router_mode: NotRequired[str]
    frontend_host: NotRequired[str]
    missing: NotRequired[list[str]]
    switch_s: NotRequired[list[float]]
    #: ratios between configurations (:func:`kvstack.dynamo_bench.comparisons`)
    comparisons: NotRequired[dict[str, float | None]]


class Target(TypedDict):
    """``targets[]`` (:func:`kvstack.bench.targets.targets`): value None where not measured; the
    confidence interval (``lo``..``hi`` at ``conf``, from ``samples`` values per side) where the
    samples allow one; ``failures``: failed requests, unsent turns and wrong probe phases behind
    it. :func:`kvstack.intervals.verdict` makes the call."""

    name: str
    value: float | None
    target: float
    op: NotRequired[Literal[">=", "<="]]
    unit: NotRequired[str]
    detail: NotRequired[str]
    lo: NotRequired[float]
    hi: NotRequired[float]
    conf: NotRequired[float]
    samples: NotRequired[list[int]]
    failures: NotRequired[int]


class Ceiling(TypedDict):
    """``ceiling`` (:mod:`kvstack.bench.ceiling`): vLLM's cache in the ceiling's cells and the
    LMCache profile measured with it (None: the matrix had none)."""

    kv_blocks: int
    tokens: int
    top: str | None


class CrossCheckRow(TypedDict):
    """``crosscheck.rows[]``: one figure (TTFT/TPOT at P50/P95), ours and AIPerf's in seconds, the
    ratio's bootstrap interval, and the call: ``yes``, ``within noise`` or ``no`` (runs before
    2026-12-07 stored a boolean and no interval)."""

    figure: str
    ours_s: float | None
    aiperf_s: float | None
    ratio: float | None
    lo: NotRequired[float | None]
    hi: NotRequired[float | None]
    agree: Literal["yes", "within noise", "no"] | bool


class CrossCheck(TypedDict):
    """``crosscheck`` (:mod:`kvstack.bench.crosscheck`): AIPerf replaying our client's requests."""

    profile: str
    users: int
    requests: dict[str, int]
    failed: dict[str, int]
    rows: list[CrossCheckRow]
    aiperf_version: NotRequired[str | None]
    server_ttft_mean_s: NotRequired[dict[str, float | None]]
    #: per client: vLLM's TTFT P50/P95 estimated in its histogram's buckets, seconds
    server_ttft_s: NotRequired[dict[str, dict[str, float | None]]]
    client_ttft_mean_s: NotRequired[float | None]
    prefix_hit_rate: NotRequired[dict[str, float | None]]
    client_cpu_s: NotRequired[dict[str, float]]
    wall_s: NotRequired[dict[str, float]]


class Workload(TypedDict):
    """``workload``: :meth:`kvstack.workloads.Workload.summary` and vLLM's KV space."""

    name: str
    params: NotRequired[dict[str, Any]]
    conversations: NotRequired[int]
    requests: NotRequired[int]
    working_set_tokens: NotRequired[int]
    working_set_bytes: NotRequired[int]
    max_prompt_tokens: NotRequired[int]
    kv_space_tokens: NotRequired[int]
    block_size: NotRequired[int]
    #: working set over vLLM's KV space
    kv_space_ratio: NotRequired[float]


class Plan(TypedDict):
    """``plan``: what the run meant to do (each step's ``planned``), written before anything runs."""

    node: NotRequired[str]
    content_salt: NotRequired[int]
    extra_vars: NotRequired[dict[str, Any]]
    profiles: NotRequired[list[str]]
    loads: NotRequired[list[str]]
    order: NotRequired[list[str]]
    probe: NotRequired[bool]
    kv_datapath: NotRequired[bool]


#: ``machine``: where the bench ran (keys with spaces: the report lists them as they are)
Machine = TypedDict(
    "Machine",
    {
        "description": NotRequired[str],
        "controller CPUs": NotRequired[int | None],
        "controller memory GiB": NotRequired[float],
    },
)


class ResultsJson(TypedDict):
    """``results/<run id>/results.json``; each key written by one part of the bench."""

    # the run (kvstack.bench.results, kvstack.bench.run)
    run_id: str
    started_at: str
    #: None until the run finishes (also when it fails)
    finished_at: str | None
    #: True until every step ran
    interrupted: bool
    #: the matrix, one entry per profile and load (kvstack.bench.matrix)
    runs: list[RunEntry]
    #: notes of what a step could not measure (each once)
    missing: NotRequired[list[str]]
    #: why the run stopped early
    error: NotRequired[str]
    machine: NotRequired[Machine]
    #: :class:`kvstack.bench.options.BenchOptions` as given (paths as strings)
    options: NotRequired[dict[str, Any]]
    plan: NotRequired[Plan]
    # the context (kvstack.bench.context)
    workload: NotRequired[Workload]
    ceiling: NotRequired[Ceiling]
    crosscheck: NotRequired[CrossCheck]
    #: bytes of one LMCache chunk of the served model
    chunk_bytes: NotRequired[int]
    #: seconds each switch of the serving node took
    switch_s: NotRequired[list[float]]
    # the steps
    ttft_probe: NotRequired[TtftProbe | None]
    ttft_probes: NotRequired[dict[str, TtftProbe]]
    kv_datapath: NotRequired[list[DatapathRow]]
    rocksdb: NotRequired[list[RocksdbRow]]
    routing: NotRequired[Routing]
    dynamo: NotRequired[Dynamo]
    targets: NotRequired[list[Target]]


#: every top-level key, in declaration order
KEYS: tuple[str, ...] = tuple(typing.get_type_hints(ResultsJson))


class SchemaError(ValueError):
    """A key results.json does not have, or a file that does not follow :class:`ResultsJson`."""


def check_key(key: str) -> None:
    """Raise :class:`SchemaError` unless *key* is a top-level key of :class:`ResultsJson`."""
    if key not in KEYS:
        near = difflib.get_close_matches(key, KEYS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise SchemaError(f"results.json has no key {key!r}{hint} (see kvstack.results_schema.ResultsJson)")


def problems(value: Any, hint: Any, where: str) -> list[str]:
    """What in *value* does not follow the type *hint* (empty: it does); *where* names it."""
    if hint is Any:
        return []
    if typing.is_typeddict(hint):
        return _dict_problems(value, hint, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if any(not problems(value, a, where) for a in args):
            return []
        return [f"{where}: {_kind(value)} is not {_name(hint)}"]
    if origin is Literal:
        return [] if value in args else [f"{where}: {value!r} is not one of {', '.join(map(repr, args))}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: {_kind(value)} is not a list"]
        return [p for i, x in enumerate(value) for p in problems(x, args[0], f"{where}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: {_kind(value)} is not an object"]
        return [p for k, x in value.items() for p in problems(x, args[1], f"{where}[{k!r}]")]
    if _is_instance(value, hint):
        return []
    return [f"{where}: {_kind(value)} is not {_name(hint)}"]


def _dict_problems(value: Any, hint: Any, where: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: {_kind(value)} is not an object"]
    hints = typing.get_type_hints(hint)
    out = [f"{where}: no {k!r}" for k in hints if k in hint.__required_keys__ and k not in value]
    for k, v in value.items():
        if k in hints:
            out += problems(v, hints[k], f"{where}.{k}" if k.isidentifier() else f"{where}[{k!r}]")
    return out


def _is_instance(value: Any, t: Any) -> bool:
    """*value* is a JSON value of type *t* (an int is a float; a bool is neither)."""
    if t is type(None):
        return value is None
    if t in (int, float) and isinstance(value, bool):
        return False
    if t is float:
        return isinstance(value, int | float)
    return isinstance(value, t)


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r:.40}"


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("NoneType", "None")


def validate(data: Any, where: str = "results.json") -> ResultsJson:
    """*data* as :class:`ResultsJson`; :class:`SchemaError` listing what does not follow it."""
    found = problems(data, ResultsJson, where)
    if found:
        more = f" (and {len(found) - 10} more)" if len(found) > 10 else ""
        raise SchemaError(f"{where} does not follow kvstack.results_schema: " + "; ".join(found[:10]) + more)
    return data


def load(path: str | Path) -> ResultsJson:
    """Read and check a ``results.json`` (:func:`validate`)."""
    p = Path(path)
    return validate(json.loads(p.read_text()), str(p))
