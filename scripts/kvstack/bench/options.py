"""The bench's options, declared once: :class:`BenchOptions` (with each option's help text and how
its command-line string is read), the size presets, :func:`validate`, and :func:`fab_task`, which
builds the ``fab run-bench`` task from the same declaration."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from kvstack import REPO, report

PROFILES = report.PROFILES
WORKLOADS = ("multi-round-qa", "long-doc-qa", "shared-prefix")
SIZES = ("smoke", "full")
MiB = 1 << 20
#: per size: workload shape, load levels, probe and data-path sizes
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "loads": ("c4",),
        "rounds": 5,
        "system_tokens": 512,
        "history_tokens": 2048,
        "question_tokens": 64,
        "answer_tokens": 16,
        "kv_ratio": 4.0,
        "probe_n": 3,
        "datapath_sizes": (256 * 1024, MiB, 4 * MiB, 32 * MiB),  # 32 MiB: an 8B model's 256-token chunk
        "datapath_n": 8,
        "rocksdb_sizes": (MiB,),
        "rocksdb_n": 16,
        "routing_load": "c4",
        "routing_kv_ratio": 1.5,
        "routing_passes": 3,
    },
    "full": {
        "loads": ("c2", "c8"),
        "rounds": 8,
        "system_tokens": 1024,
        "history_tokens": 4096,
        "question_tokens": 64,
        "answer_tokens": 32,
        "kv_ratio": 6.0,
        "probe_n": 10,
        "datapath_sizes": (256 * 1024, MiB, 2 * MiB, 4 * MiB, 8 * MiB, 16 * MiB, 32 * MiB),
        "datapath_n": 32,
        "rocksdb_sizes": (MiB, 4 * MiB, 16 * MiB),
        "rocksdb_n": 64,
        "routing_load": "c8",
        "routing_kv_ratio": 1.5,
        "routing_passes": 5,
    },
}


#: variables of the KV server's roles: a --set/--vary of one re-applies the kv hosts as well
KV_SERVER_PREFIXES = ("redis_server_", "kvrocks_")
#: options given as repeated NAME=VALUE flags (invoke's iterable arguments)
ITERABLE = ("extra_vars", "vary")


class BenchError(ValueError):
    """Bad bench arguments, found before anything changed."""


def _csv(cast: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(value: str) -> tuple:
        try:
            return tuple(cast(x.strip()) for x in str(value).split(",") if x.strip())
        except ValueError as e:
            raise BenchError(f"bad list {value!r}: {e}") from None

    return parse


def _number(cast: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            return cast(value)
        except ValueError:
            raise BenchError(f"{value!r} is not {what}") from None

    return parse


def meta(help: str, parse: Callable[[str], Any] | None = str, cli: str | None = None) -> dict[str, Any]:
    """A :class:`BenchOptions` field's metadata: its ``fab --help run-bench`` text, how a
    command-line string becomes its value (None: a flag), and its option name if not the field's."""
    return {"help": help, "parse": parse, "cli": cli}


INT, FLOAT = _number(int, "an integer"), _number(float, "a number")


@dataclass
class BenchOptions:
    """What to run; ``None`` fields take the value of the ``size`` preset."""

    inventory: Path | None = field(
        default=None, metadata=meta("inventory directory (default: ansible.cfg's, inventory/lab)", Path)
    )
    size: str = field(default="smoke", metadata=meta("smoke (minutes, default) or full"))
    profiles: tuple[str, ...] = field(
        default=PROFILES,
        metadata=meta("tier profiles, comma-separated (default none,dram,kv,dram+kv)", _csv(str)),
    )
    loads: tuple[str, ...] | None = field(
        default=None,
        metadata=meta(
            "load levels: cN = N closed-loop users taking turns, qX = X conversations/s (smoke: c4)",
            _csv(str),
        ),
    )
    workload: str = field(
        default="multi-round-qa", metadata=meta("multi-round-qa (default), long-doc-qa or shared-prefix")
    )
    kv_ratio: float | None = field(
        default=None, metadata=meta("working set / vLLM's KV space (smoke 4, full 6)", FLOAT)
    )
    users: int | None = field(
        default=None, metadata=meta("conversations (default: as many as kv-ratio needs)", INT)
    )
    rounds: int | None = field(default=None, metadata=meta("turns per conversation (smoke 5, full 8)", INT))
    system_tokens: int | None = field(
        default=None, metadata=meta("shared system prompt, tokens (smoke 512, full 1024)", INT)
    )
    history_tokens: int | None = field(
        default=None,
        metadata=meta("multi-round QA: each user's own context before the first question (smoke 2048)", INT),
    )
    question_tokens: int | None = field(default=None, metadata=meta("tokens per question (64)", INT))
    answer_tokens: int | None = field(
        default=None, metadata=meta("tokens per answer (smoke 16, full 32)", INT)
    )
    chunk_sizes: tuple[int, ...] = field(
        default=(),
        metadata=meta("LMCache chunk sizes (tokens, comma-separated) as a matrix dimension", _csv(int)),
    )
    repeats: int = field(
        default=1, metadata=meta("passes over the matrix, each in its own shuffled order (default 1)", INT)
    )
    seed: int = field(default=0, metadata=meta("seed of workloads and order (default 0)", INT))
    warmup: int = field(
        default=2, metadata=meta("unmeasured warm-up requests after each switch (default 2)", INT)
    )
    probe: bool = field(
        default=True, metadata=meta("TTFT probe of a 4k-token context (default on; --no-probe)", None)
    )
    probe_n: int | None = field(
        default=None, metadata=meta("contexts the TTFT probe measures (smoke 3, full 10)", INT)
    )
    datapath: bool = field(
        default=True, metadata=meta("KV data-path bench (default on; --no-datapath)", None)
    )
    datapath_sizes: tuple[int, ...] | None = field(
        default=None,
        metadata=meta("value sizes in bytes, comma-separated (smoke: 256 KiB, 1, 4, 32 MiB)", _csv(int)),
    )
    datapath_n: int | None = field(
        default=None, metadata=meta("values per size in the data-path bench (smoke 8, full 32)", INT)
    )
    rocksdb: bool = field(
        default=True,
        metadata=meta("RocksDB engine bench with the Kvrocks profiles (default on; --no-rocksdb)", None),
    )
    rocksdb_sizes: tuple[int, ...] | None = field(
        default=None, metadata=meta("RocksDB bench value sizes in bytes (smoke: 1 MiB)", _csv(int))
    )
    rocksdb_n: int | None = field(
        default=None, metadata=meta("values per size in the RocksDB bench (smoke 16, full 64)", INT)
    )
    rocksdb_dir: Path = field(
        default=Path("/var/tmp"),
        metadata=meta("directory on the disk the RocksDB bench measures (default /var/tmp)", Path),
    )
    routing: bool = field(
        default=True,
        metadata=meta(
            "routing bench: 1 vs 2 nodes, round-robin vs cache-aware via the router (default on)", None
        ),
    )
    routing_without_tier: bool = field(
        default=True,
        metadata=meta(
            "routing again with every serving node on profile none: vLLM's own cache only "
            "(default on; --no-routing-without-tier)",
            None,
        ),
    )
    routing_load: str | None = field(
        default=None, metadata=meta("closed-loop users of the routing runs (smoke c4, full c8)")
    )
    #: routing runs' working set / ONE node's vLLM KV space: above 1 (one node's cache cannot hold
    #: it), below the number of nodes (locality-preserving routing lets the nodes' caches split it)
    routing_kv_ratio: float | None = field(
        default=None,
        metadata=meta("routing runs' working set / one node's vLLM KV space (default 1.5)", FLOAT),
    )
    #: fresh conversation sets per routing configuration, run one after another: the sample grows,
    #: the working set (one set's) does not; 50 requests gave TTFT P95 intervals of 0.5-1.3x
    routing_passes: int | None = field(
        default=None,
        metadata=meta(
            "routing/Dynamo runs per configuration, each on fresh conversations (smoke 3, full 5)", INT
        ),
    )
    dynamo: bool = field(
        default=False,
        metadata=meta(
            "Dynamo bench: frontend + KV router, with/without LMCache, 1 vs 2 workers (default off)", None
        ),
    )
    matrix: bool = field(
        default=True,
        metadata=meta("the tier-profile matrix (default on; --no-matrix runs only the other steps)", None),
    )
    crosscheck: bool = field(
        default=True,
        metadata=meta(
            "AIPerf replays one run's requests in profile none; its TTFT/TPOT beside ours "
            "(default on; installs AIPerf into .venv-aiperf on first use; --no-crosscheck)",
            None,
        ),
    )
    ceiling: bool = field(
        default=True,
        metadata=meta(
            "the ceiling: none, and the last LMCache profile, with vLLM's own cache sized to hold the "
            "working set (default on with the matrix; --no-ceiling)",
            None,
        ),
    )
    switch: bool = field(
        default=True,
        metadata=meta(
            "switch the node's profile per cell (default on; --no-switch measures it as it is)", None
        ),
    )
    extra_vars: dict[str, str] = field(
        default_factory=dict,
        metadata=meta(
            "NAME=VALUE: an Ansible variable for every profile switch (tuning), repeatable", None, cli="set_"
        ),
    )
    vary: dict[str, tuple[str, ...]] = field(
        default_factory=dict,
        metadata=meta(
            "NAME=V1,V2: each LMCache profile measured again with each value of one Ansible variable, "
            "one variable at a time against the inventory's own (tuning; a redis_server_ or kvrocks_ "
            "variable re-applies the kv hosts too), repeatable",
            None,
            cli="vary",
        ),
    )
    node: str | None = field(
        default=None, metadata=meta("serving node to measure (default: the first of group serving)")
    )
    max_seconds: float | None = field(default=None, metadata=meta("cap on each load run's duration", FLOAT))
    slo_ttft_ms: float = field(
        default=2000.0, metadata=meta("goodput SLO: time to first token, ms (default 2000)", FLOAT)
    )
    slo_tpot_ms: float = field(
        default=200.0,
        metadata=meta("goodput SLO: time per output token after the first, ms (default 200)", FLOAT),
    )
    results_dir: Path = field(
        default=REPO / "results", metadata=meta("results root (default results/)", Path, cli="results")
    )

    def preset(self, key: str) -> Any:
        """The option's value, or the size preset's."""
        v = getattr(self, key, None)
        return PRESETS[self.size][key] if v is None else v


@dataclass(frozen=True)
class Load:
    """A load level: ``c4`` = 4 closed-loop users taking turns, ``q2.5`` = 2.5 conversations/s."""

    label: str
    mode: str
    value: float

    @classmethod
    def parse(cls, label: str, option: str = "--loads") -> Load:
        """Parse ``cN`` or ``qX``; a clear error names the bad value and its *option*."""
        mt = re.fullmatch(r"(c)(\d+)|(q)(\d+(?:\.\d+)?)", label.strip())
        if not mt:
            raise BenchError(f"{option}: {label!r} is not cN (N closed-loop users) or qX (X conversations/s)")
        if mt.group(1):
            n = int(mt.group(2))
            if n < 1:
                raise BenchError(f"{option}: {label!r} needs at least 1 user")
            return cls(label.strip(), "closed", n)
        x = float(mt.group(4))
        if x <= 0:
            raise BenchError(f"{option}: {label!r} needs a rate above 0")
        return cls(label.strip(), "open", x)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_shape(o: BenchOptions) -> None:
    """Workload shape and sizes: each bad value named."""
    for name in ("rounds", "question_tokens"):
        if o.preset(name) < 1:
            raise BenchError(f"{_flag(name)}: must be >= 1, got {o.preset(name)}")
    for name in ("system_tokens", "history_tokens", "answer_tokens", "warmup"):
        if o.preset(name) < 0:
            raise BenchError(f"{_flag(name)}: must be >= 0, got {o.preset(name)}")
    if o.preset("answer_tokens") < 1:
        raise BenchError("--answer-tokens: must be >= 1 (TTFT and ITL need generated tokens)")
    if o.preset("kv_ratio") <= 0:
        raise BenchError(f"--kv-ratio: must be > 0, got {o.kv_ratio}")
    if o.users is not None and o.users < 1:
        raise BenchError(f"--users: must be >= 1, got {o.users}")
    if o.repeats < 1:
        raise BenchError(f"--repeats: must be >= 1, got {o.repeats}")
    if o.preset("probe_n") < 1:
        raise BenchError(f"--probe-n: must be >= 1, got {o.probe_n}")
    for name in ("datapath_sizes", "rocksdb_sizes"):
        sizes = o.preset(name)
        if not sizes or any(x < 1 for x in sizes):
            raise BenchError(f"{_flag(name)}: value sizes must be >= 1 byte, got {sizes}")
    for name in ("datapath_n", "rocksdb_n"):
        if o.preset(name) < 1:
            raise BenchError(f"{_flag(name)}: must be >= 1, got {o.preset(name)}")
    for c in o.chunk_sizes:
        if c < 1:
            raise BenchError(f"--chunk-sizes: {c} is not a positive number of tokens")


def _check_run(o: BenchOptions) -> None:
    """Limits, switches and the routing/Dynamo steps."""
    if o.max_seconds is not None and o.max_seconds <= 0:
        raise BenchError(f"--max-seconds: must be > 0, got {o.max_seconds}")
    for name in ("slo_ttft_ms", "slo_tpot_ms"):
        if getattr(o, name) <= 0:
            raise BenchError(f"--{name.replace('_', '-')}: must be > 0, got {getattr(o, name)}")
    _check_vars(o)
    if (o.chunk_sizes or len(o.profiles) > 1 or o.probe or o.extra_vars or o.vary) and not o.switch:
        raise BenchError(
            "--no-switch runs the profile the nodes have: give one --profiles entry and --no-probe"
        )
    if (o.routing or o.dynamo) and o.preset("routing_passes") < 1:
        raise BenchError(f"--routing-passes: must be >= 1, got {o.routing_passes}")
    if (o.routing or o.dynamo) and o.preset("routing_kv_ratio") <= 0:
        raise BenchError(f"--routing-kv-ratio: must be > 0, got {o.routing_kv_ratio}")
    if (o.routing or o.dynamo) and Load.parse(o.preset("routing_load"), "--routing-load").mode != "closed":
        raise BenchError(f"--routing-load: {o.preset('routing_load')!r} must be a closed loop (cN)")
    if o.rocksdb and not o.rocksdb_dir.is_dir():
        raise BenchError(f"--rocksdb-dir: {o.rocksdb_dir} is not a directory")


def _check_vars(o: BenchOptions) -> None:
    """``--set`` and ``--vary``: Ansible variable names, none the matrix sets itself, none in both,
    each ``--vary`` with a value."""
    matrix_vars = {"tier_profile", "vllm_num_kv_blocks"}
    chunk = {"lmcache_chunk_size"}
    for flag, names, own in (
        ("--set", list(o.extra_vars), matrix_vars | chunk),
        ("--vary", list(o.vary), matrix_vars | (chunk if o.chunk_sizes else set())),
    ):
        reserved = own & set(names)
        if reserved:
            raise BenchError(
                f"{flag}: {', '.join(sorted(reserved))} is set by --profiles / --chunk-sizes / --ceiling"
            )
        bad_names = [k for k in names if not re.fullmatch(r"[a-z_][a-z0-9_]*", k)]
        if bad_names:
            raise BenchError(f"{flag}: {', '.join(bad_names)} is not an Ansible variable name")
    both = sorted(set(o.extra_vars) & set(o.vary))
    if both:
        raise BenchError(f"--vary: {', '.join(both)} is also given to --set")
    empty = sorted(k for k, v in o.vary.items() if not v)
    if empty:
        raise BenchError(f"--vary: {', '.join(empty)} has no values (NAME=V1,V2)")


def kv_side(o: BenchOptions) -> bool:
    """Whether a ``--set``/``--vary`` variable belongs to the KV server's roles (the switches
    then re-apply the kv hosts too)."""
    return any(k.startswith(KV_SERVER_PREFIXES) for k in (*o.extra_vars, *o.vary))


def yaml_value(raw: str) -> Any:
    """A ``--set``/``--vary`` value as Ansible's YAML reads it (``false``, ``4``, ``[]``), so a
    role sees a boolean or a list, not the string; an unreadable one stays a string."""
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def check_chunk_sizes(o: BenchOptions, node: str, block_size: int) -> None:
    """``--chunk-sizes`` (and ``--vary lmcache_chunk_size=``) against the node's vLLM block size
    (the CPU build's 128, CUDA's 16 by default: roles/lmcache's ``lmcache_engine_block_size``),
    known once the endpoints are."""
    given = [("--chunk-sizes", c) for c in o.chunk_sizes]
    given += [("--vary lmcache_chunk_size", yaml_value(v)) for v in o.vary.get("lmcache_chunk_size", ())]
    for flag, c in given:
        if not isinstance(c, int) or c < 1 or c % block_size:
            raise BenchError(f"{flag}: {c} is not a multiple of {node}'s vLLM block size {block_size}")


def validate(o: BenchOptions) -> list[Load]:
    """Check every option before anything changes; returns the parsed load levels."""
    if o.size not in PRESETS:
        raise BenchError(f"--size: {o.size!r} is not one of {', '.join(SIZES)}")
    bad = [p for p in o.profiles if p not in PROFILES]
    if bad or not o.profiles:
        raise BenchError(
            f"--profiles: {', '.join(bad) or 'empty'}: each must be one of {', '.join(PROFILES)}"
        )
    if len(set(o.profiles)) != len(o.profiles):
        raise BenchError("--profiles: a profile is listed twice")
    if o.workload not in WORKLOADS:
        raise BenchError(f"--workload: {o.workload!r} is not one of {', '.join(WORKLOADS)}")
    loads = [Load.parse(x) for x in o.preset("loads")]
    if len({x.label for x in loads}) != len(loads):
        raise BenchError("--loads: a load level is listed twice")
    _check_shape(o)
    _check_run(o)
    return loads


# --- the command line --------------------------------------------------------------------------


def _cli_name(f: Any) -> str:
    return f.metadata.get("cli") or f.name


def from_cli(values: dict[str, Any]) -> BenchOptions:
    """:class:`BenchOptions` from the task's arguments (strings, flags, the ``set_`` list);
    an argument left out keeps the option's default."""
    kwargs: dict[str, Any] = {}
    for f in fields(BenchOptions):
        raw = values.get(_cli_name(f))
        if raw is None:
            continue
        if f.name == "extra_vars":
            kwargs[f.name] = _set_pairs(raw, "--set")
        elif f.name == "vary":
            kwargs[f.name] = {k: _csv(str)(v) for k, v in _set_pairs(raw, "--vary").items()}
        elif f.metadata["parse"] is None:
            kwargs[f.name] = bool(raw)
        else:
            try:
                kwargs[f.name] = f.metadata["parse"](raw)
            except BenchError as e:
                raise BenchError(f"{_flag(_cli_name(f).rstrip('_'))}: {e}") from None
    return BenchOptions(**kwargs)


def _set_pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise BenchError(f"{flag}: {item!r}: expected NAME=VALUE")
        out[name.strip()] = value
    return out


def iterable_args() -> list[str]:
    """The task's arguments given as repeated flags (invoke's ``iterable``)."""
    return [_cli_name(f) for f in fields(BenchOptions) if f.name in ITERABLE]


def task_help() -> dict[str, str]:
    """``fab --help run-bench``'s text of every option."""
    return {_cli_name(f): f.metadata["help"] for f in fields(BenchOptions)}


def fab_task(body: Callable[[dict[str, Any]], None]) -> Callable[..., None]:
    """A function with one keyword parameter per option (flags keep their bool default, so
    invoke makes ``--no-x`` of them; the others default to None: left out, the option's default)
    that calls *body* with the given values; the fabfile wraps it in ``@task``."""

    def run_bench(c: Any, **values: Any) -> None:
        body(values)

    params = [inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for f in fields(BenchOptions):
        default = f.default if f.metadata["parse"] is None and f.name not in ITERABLE else None
        params.append(inspect.Parameter(_cli_name(f), inspect.Parameter.KEYWORD_ONLY, default=default))
    run_bench.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run_bench.__doc__ = body.__doc__
    return run_bench
