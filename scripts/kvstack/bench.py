"""`fab run-bench`: the tier benchmark matrix, where its time goes, and the report.

One run, in ``results/<run id>/``:

1. **Endpoints** from Ansible (``playbooks/bench-endpoints.yml``): each role says where its service
   listens, with its own defaults and the inventory's values (vault included).
2. **Workload** built offline with the served model's own tokenizer (fetched from the serving
   node), sized against vLLM's actual KV space (read from ``vllm:cache_config_info``), so the
   working set is ``kv_ratio`` times what vLLM's own cache holds. Every run draws its own text
   (``--seed`` plus a random salt, recorded): no run can hit a prefix another run, or an earlier
   bench, stored, so nothing is ever flushed from any tier.
3. **Matrix**: tier profiles (x LMCache chunk sizes, optional) x load levels, repeated; each cell
   switches the serving node through ``site.yml`` (the provisioning code path), sends warm-up
   requests that are not measured, empties vLLM's own prefix cache, then runs each load level with
   counters read before and after (:mod:`kvstack.metrics`). The profile order is shuffled per
   repeat (seeded), so drift does not favour one profile.
4. **TTFT probe** (profile ``kv``): a 4k-token context cold, as vLLM's own prefix-cache hit, and
   served from the KV-server tier after vLLM's cache was emptied.
5. **KV data path** on a serving node against the KV server, and the **RocksDB engine** with each
   Kvrocks tuning profile on disk and tmpfs (:mod:`kvstack.datapath`).
6. **Routing** (:mod:`kvstack.routing`): the multi-round workload through the router, 1 node vs
   2 nodes and round-robin vs cache-aware, with per-node requests and hit rates.
7. **Dynamo** (:mod:`kvstack.dynamo_bench`, ``--dynamo``, off by default): the same kind of
   workload through NVIDIA Dynamo's frontend and KV router, with and without LMCache attached to
   its vLLM workers, on one and two workers; Dynamo goes back to the inventory's state after.
8. **Targets** of the issues, met or missed, then ``report.md`` and plots (:mod:`kvstack.report`).

``results.json`` is rewritten after every step: an interrupted or failed run keeps what it
measured, and its report lists what is missing. The serving nodes go back to the inventory's tier
profile at the end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kvstack import REPO, datapath, dynamo_bench, provision, report, rocksbench, routing
from kvstack import metrics as m
from kvstack.loadgen import LoadConfig, log_progress, run
from kvstack.log import brief, progress
from kvstack.stack import (
    StackError,
    connection,
    fetch_endpoints,
    kv_space_tokens,
    lmcache_source,
    metric_sources,
    reset_prefix_cache,
    run_datapath,
    vllm_source,
    wait_healthy,
)
from kvstack.stats import SLO, RequestResult, percentile, summarize, write_jsonl
from kvstack.workloads import (
    TokenizerAdapter,
    Workload,
    kv_bytes_per_token,
    long_doc_qa,
    multi_round_qa,
    shared_prefix,
)

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
        "datapath_sizes": (256 * 1024, MiB, 4 * MiB),
        "datapath_n": 8,
        "rocksdb_sizes": (MiB,),
        "rocksdb_n": 16,
        "routing_load": "c4",
        "routing_kv_ratio": 1.5,
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
    },
}
PROBE_TOKENS = 4096
TARGETS = {"throughput_x": 3.0, "kv_vs_local_hit_x": 1.25, "cold_vs_kv_x": 5.0, "l2_vs_raw": 0.70}


class BenchError(ValueError):
    """Bad bench arguments, found before anything changed."""


__all__ = ["BenchError", "BenchOptions", "StackError", "run_bench"]


@dataclass
class BenchOptions:
    """What to run; ``None`` fields take the value of the ``size`` preset."""

    inventory: Path | None = None
    size: str = "smoke"
    profiles: tuple[str, ...] = PROFILES
    loads: tuple[str, ...] | None = None
    workload: str = "multi-round-qa"
    kv_ratio: float | None = None
    users: int | None = None
    rounds: int | None = None
    system_tokens: int | None = None
    history_tokens: int | None = None
    question_tokens: int | None = None
    answer_tokens: int | None = None
    chunk_sizes: tuple[int, ...] = ()
    repeats: int = 1
    seed: int = 0
    warmup: int = 2
    probe: bool = True
    probe_n: int | None = None
    datapath: bool = True
    datapath_sizes: tuple[int, ...] | None = None
    datapath_n: int | None = None
    rocksdb: bool = True
    rocksdb_sizes: tuple[int, ...] | None = None
    rocksdb_n: int | None = None
    rocksdb_dir: Path = Path("/var/tmp")
    routing: bool = True
    routing_load: str | None = None
    #: routing runs' working set / ONE node's vLLM KV space: above 1 (one node's cache cannot hold
    #: it), below the number of nodes (locality-preserving routing lets the nodes' caches split it)
    routing_kv_ratio: float | None = None
    #: the Dynamo step (needs the dynamo_frontend / dynamo_worker groups; turns Dynamo on for it)
    dynamo: bool = False
    #: the tier-profile matrix (off: only the other steps, e.g. ``--no-matrix --dynamo``)
    matrix: bool = True
    switch: bool = True
    #: Ansible variables applied with every profile switch (tuning: ``lmcache_kv_workers=4``)
    extra_vars: dict[str, str] = field(default_factory=dict)
    node: str | None = None
    max_seconds: float | None = None
    slo_ttft_ms: float = 2000.0
    slo_itl_ms: float = 200.0
    results_dir: Path = REPO / "results"

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
    for name in ("rounds", "question_tokens"):
        if o.preset(name) < 1:
            raise BenchError(f"--{name.replace('_', '-')}: must be >= 1, got {o.preset(name)}")
    for name in ("system_tokens", "history_tokens", "answer_tokens", "warmup"):
        if o.preset(name) < 0:
            raise BenchError(f"--{name.replace('_', '-')}: must be >= 0, got {o.preset(name)}")
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
            raise BenchError(f"--{name.replace('_', '-')}: value sizes must be >= 1 byte, got {sizes}")
    for name in ("datapath_n", "rocksdb_n"):
        if o.preset(name) < 1:
            raise BenchError(f"--{name.replace('_', '-')}: must be >= 1, got {o.preset(name)}")
    for c in o.chunk_sizes:
        if c < 1 or c % 128:
            raise BenchError(f"--chunk-sizes: {c} is not a positive multiple of vLLM's CPU block size 128")
    if o.max_seconds is not None and o.max_seconds <= 0:
        raise BenchError(f"--max-seconds: must be > 0, got {o.max_seconds}")
    if o.slo_ttft_ms <= 0 or o.slo_itl_ms <= 0:
        raise BenchError("--slo-ttft-ms and --slo-itl-ms must be > 0")
    reserved = {"tier_profile", "lmcache_chunk_size"} & set(o.extra_vars)
    if reserved:
        raise BenchError(f"--set: {', '.join(sorted(reserved))} is set by --profiles / --chunk-sizes")
    bad_names = [k for k in o.extra_vars if not re.fullmatch(r"[a-z_][a-z0-9_]*", k)]
    if bad_names:
        raise BenchError(f"--set: {', '.join(bad_names)} is not an Ansible variable name")
    if (o.chunk_sizes or len(o.profiles) > 1 or o.probe or o.extra_vars) and not o.switch:
        raise BenchError(
            "--no-switch runs the profile the nodes have: give one --profiles entry and --no-probe"
        )
    if (o.routing or o.dynamo) and o.preset("routing_kv_ratio") <= 0:
        raise BenchError(f"--routing-kv-ratio: must be > 0, got {o.routing_kv_ratio}")
    if (o.routing or o.dynamo) and Load.parse(o.preset("routing_load"), "--routing-load").mode != "closed":
        raise BenchError(f"--routing-load: {o.preset('routing_load')!r} must be a closed loop (cN)")
    if o.rocksdb and not o.rocksdb_dir.is_dir():
        raise BenchError(f"--rocksdb-dir: {o.rocksdb_dir} is not a directory")
    return loads


# --- results directory -------------------------------------------------------------------------


class Results:
    """``results/<run id>/``: results.json rewritten atomically after each step, raw data beside."""

    def __init__(self, root: Path, run_id: str | None = None) -> None:
        self.run_id = run_id or dt.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
        self.dir = root / self.run_id
        (self.dir / "runs").mkdir(parents=True, exist_ok=False)
        self.data: dict[str, Any] = {
            "run_id": self.run_id,
            "started_at": _now(),
            "finished_at": None,
            "interrupted": True,  # until the run finishes
            "runs": [],
            "missing": [],
        }
        self.repeats: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def save(self) -> None:
        """Write results.json (atomically: a crash leaves the previous version)."""
        tmp = self.dir / "results.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.dir / "results.json")

    def add_run(
        self,
        profile: str,
        load: str,
        repeat: int,
        records: list[RequestResult],
        wall_s: float,
        meta: dict[str, Any],
        deltas: dict[str, dict[str, float]],
        kinds: dict[str, str],
        counters: dict[str, set[str]],
        slo: SLO,
    ) -> dict[str, Any]:
        """Store one measured run and update the (profile, load) entry merged over repeats."""
        stem = f"{_safe(profile)}__{_safe(load)}__r{repeat}"
        write_jsonl(records, self.dir / "runs" / f"{stem}.jsonl")
        (self.dir / "runs" / f"{stem}.metrics.json").write_text(json.dumps(deltas, indent=1, sort_keys=True))
        rep = {
            "repeat": repeat,
            "file": f"runs/{stem}.jsonl",
            "wall_s": wall_s,
            "meta": meta,
            "deltas": deltas,
            "records": records,
        }
        reps = self.repeats.setdefault((profile, load), [])
        reps.append(rep)
        all_records = [r for x in reps for r in x["records"]]
        merged = m.merge([x["deltas"] for x in reps], counters)
        entry = {
            "profile": profile,
            "load": load,
            "repeats": [{k: v for k, v in x.items() if k not in ("deltas", "records")} for x in reps],
            "summary": summarize(all_records, slo=slo, wall_time_s=sum(x["wall_s"] for x in reps)).to_dict(),
            "metrics": m.summarize(merged, kinds),
        }
        self.data["runs"] = [r for r in self.data["runs"] if (r["profile"], r["load"]) != (profile, load)]
        self.data["runs"].append(entry)
        self.save()
        return entry


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s)


# --- the matrix --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """A stack configuration to measure: tier profile and (optionally) LMCache chunk size."""

    profile: str
    chunk: int | None = None

    @property
    def label(self) -> str:
        """The report's profile column."""
        return self.profile if self.chunk is None else f"{self.profile} chunk={self.chunk}"

    def extra_vars(self) -> dict[str, Any]:
        """``-e`` values of site.yml for this cell."""
        ev: dict[str, Any] = {"tier_profile": self.profile}
        if self.chunk is not None:
            ev["lmcache_chunk_size"] = self.chunk
        return ev


def cells(o: BenchOptions) -> list[Cell]:
    """Profiles x chunk sizes (``none`` does not use LMCache: one cell)."""
    out = []
    for p in o.profiles:
        if o.chunk_sizes and p != "none":
            out += [Cell(p, c) for c in o.chunk_sizes]
        else:
            out.append(Cell(p))
    return out


def schedule(cs: list[Cell], repeats: int, seed: int) -> list[tuple[int, Cell]]:
    """Per repeat a seeded shuffle of the cells; consecutive repeats never start with the cell the
    previous one ended with (no free ride on a warm stack)."""
    rng = random.Random(seed)
    out: list[tuple[int, Cell]] = []
    for r in range(repeats):
        order = list(cs)
        rng.shuffle(order)
        if out and len(order) > 1 and order[0] == out[-1][1]:
            order.append(order.pop(0))
        out += [(r, c) for c in order]
    return out


def switch(o: BenchOptions, nodes: list[str], cell: Cell | None, log: Path) -> float:
    """Apply *cell* (None: the inventory's own values) to the serving *nodes* through site.yml;
    returns the seconds it took."""
    t0 = time.monotonic()
    what = cell.label if cell else "the inventory's tier profile"
    progress(f"switching {', '.join(nodes)} to {what} (site.yml --tags lmcache,vllm)")
    out = provision.playbook_logged(
        "site.yml",
        log,
        f"{_now()} switch to {what}",
        inventory=o.inventory,
        limit=",".join(nodes),
        tags="lmcache,vllm",
        extra_vars={**o.extra_vars, **cell.extra_vars()} if cell else None,
    )
    if out.returncode != 0:
        raise RuntimeError(f"site.yml failed switching to {what} (rc {out.returncode}); see {log}")
    return time.monotonic() - t0


def build_workload(
    o: BenchOptions, tok: TokenizerAdapter, kv_tokens: int, seed: int, ratio: float | None = None
) -> Workload:
    """The workload of one run (its own *seed*), sized against vLLM's KV space (*ratio* times it,
    default ``--kv-ratio``)."""
    ratio, a = ratio or o.preset("kv_ratio"), o.preset("answer_tokens")
    s, q, r = o.preset("system_tokens"), o.preset("question_tokens"), o.preset("rounds")
    h = o.preset("history_tokens")
    if o.workload == "multi-round-qa":
        per_user = h + r * q + (r - 1) * a
        users = o.users or max(1, -(-int(ratio * kv_tokens - s) // per_user))
        return multi_round_qa(
            tok,
            users=users,
            rounds=r,
            system_tokens=s,
            history_tokens=h,
            question_tokens=q,
            answer_tokens=a,
            seed=seed,
        )
    doc = max(s, 256) * 4
    if o.workload == "long-doc-qa":
        docs = o.users or max(1, -(-int(ratio * kv_tokens) // doc))
        return long_doc_qa(
            tok, documents=docs, doc_tokens=doc, repeats=r, question_tokens=q, answer_tokens=a, seed=seed
        )
    n = o.users or max(1, -(-int(ratio * kv_tokens) // (doc + r * q)))
    return shared_prefix(
        tok, prefixes=n, suffixes=r, prefix_tokens=doc, suffix_tokens=q, answer_tokens=a, seed=seed
    )


def warm_up(o: BenchOptions, vllm: dict[str, Any], tok: TokenizerAdapter, n: int, seed: int) -> None:
    """*n* short requests that share nothing with the workload; not measured."""
    if n <= 0:
        return
    w = shared_prefix(
        tok, prefixes=n, suffixes=1, prefix_tokens=300, suffix_tokens=8, answer_tokens=8, seed=seed
    )
    res = run(w.conversations, LoadConfig(vllm["url"], vllm["model"], api_key=vllm.get("api_key") or None))
    bad = [r.error for r in res.records if not r.ok]
    if bad:
        raise RuntimeError(f"warm-up failed on {vllm['url']}: {bad[0]}")


def ttft_probe(
    vllm: dict[str, Any], lmcache: m.Source | None, tok: TokenizerAdapter, n: int, seed: int
) -> dict[str, Any]:
    """TTFT of a 4k-token context: cold, as vLLM's own prefix-cache hit, and from the KV-server tier
    (vLLM's cache emptied in between). vLLM's and LMCache's counters per phase say where the tokens
    came from (a KV-server hit must show LMCache L2 hit tokens, not L1)."""
    docs = long_doc_qa(
        tok, documents=n, doc_tokens=PROBE_TOKENS, repeats=1, question_tokens=0, answer_tokens=1, seed=seed
    )
    cfg = LoadConfig(vllm["url"], vllm["model"], api_key=vllm.get("api_key") or None)
    phases = ("cold", "vLLM prefix-cache hit", "KV-server tier hit")
    rows: dict[str, list[float]] = {k: [] for k in phases}
    counters: dict[str, dict[str, float]] = {k: {} for k in phases}
    failed = 0
    sources = [vllm_source(vllm, "vllm")]
    sources += [lmcache] if lmcache else []
    for i, conv in enumerate(docs.conversations):
        for kind in phases:
            if kind == "KV-server tier hit":
                time.sleep(1.0)  # LMCache stores asynchronously: let the store land first
                if not reset_prefix_cache(vllm):
                    raise RuntimeError(
                        "POST /reset_prefix_cache failed: the probe needs VLLM_SERVER_DEV_MODE=1"
                    )
            before = m.snapshot_all(sources)
            rec = run([conv], cfg).records[0]
            deltas, _ = m.deltas_between(before, m.snapshot_all(sources))
            vd = deltas.get("vllm", {})
            ld = deltas.get(lmcache.name, {}) if lmcache else {}
            tokens = {
                src: m.total(vd, "vllm:prompt_tokens_by_source_total", source=src)
                for src in ("local_cache_hit", "external_kv_transfer")
            }
            tokens["LMCache L1 hit"] = m.total(ld, "lmcache_mp_lookup_hit_l1_tokens_total")
            tokens["LMCache L2 hit"] = m.total(ld, "lmcache_mp_lookup_hit_l2_tokens_total")
            for k, v in tokens.items():
                counters[kind][k] = counters[kind].get(k, 0.0) + v
            if rec.ok and rec.ttft is not None:
                rows[kind].append(rec.ttft)
            else:
                failed += 1
        progress(f"TTFT probe: {i + 1}/{n} contexts")
    return {
        "prompt_tokens": PROBE_TOKENS,
        "n": n,
        "failed": failed,
        "ttft_s": rows,
        "ttft_p50_s": {k: percentile(v, 50) for k, v in rows.items()},
        "tokens_by_source": counters,
    }


# --- targets -----------------------------------------------------------------------------------


def targets(results: dict[str, Any], ws_ratio: float | None) -> list[dict[str, Any]]:
    """The issue's targets from what this run measured (value None where not measured)."""
    out = []
    runs = report.run_index(results)
    for load in report.loads_of(results):
        base = _tps(runs.get(("none", load)))
        top = _tps(runs.get(("dram+kv", load)))
        out.append(
            {
                "name": "tokens/s dram+kv vs none",
                "value": top / base if base and top else None,
                "target": TARGETS["throughput_x"],
                "op": ">=",
                "unit": "x",
                "detail": f"{results.get('workload', {}).get('name', '')}, load {load}, working set "
                + (f"{ws_ratio:.1f}x vLLM's KV space" if ws_ratio else "?"),
            }
        )
    p = (results.get("ttft_probe") or {}).get("ttft_p50_s") or {}
    cold, local, kv = p.get("cold"), p.get("vLLM prefix-cache hit"), p.get("KV-server tier hit")
    out.append(
        {
            "name": "TTFT P50 KV-server tier vs vLLM prefix-cache hit",
            "value": kv / local if kv and local else None,
            "target": TARGETS["kv_vs_local_hit_x"],
            "op": "<=",
            "unit": "x",
            "detail": f"{PROBE_TOKENS}-token context",
        }
    )
    out.append(
        {
            "name": "TTFT P50 cold vs KV-server tier",
            "value": cold / kv if kv and cold else None,
            "target": TARGETS["cold_vs_kv_x"],
            "op": ">=",
            "unit": "x",
            "detail": f"{PROBE_TOKENS}-token context",
        }
    )
    chunk = results.get("chunk_bytes")
    ratios = datapath.l2_vs_raw(results.get("kv_datapath") or [])
    # the measured value size nearest one LMCache chunk of this model
    size = min(ratios, key=lambda s: abs(s - (chunk or 0))) if ratios else None
    out.append(
        {
            "name": "LMCache L2 retrieve vs raw RESP GET",
            "value": ratios.get(size) if size else None,
            "target": TARGETS["l2_vs_raw"],
            "op": ">=",
            "unit": "x",
            "detail": f"value {report.fmt_bytes(size)} (one LMCache chunk of this model)" if size else "",
        }
    )
    rt = (results.get("routing") or {}).get("target") or {}
    higher = rt.get("hit_rate_higher_on") or {}
    out.append(
        {
            "name": "TTFT P95 round-robin vs cache-aware routing (2 nodes)",
            "value": rt.get("measured"),
            "target": routing.TARGET_P95_X,
            "op": ">=",
            "unit": "x",
            "detail": "multi-round QA through the router",
        }
    )
    out.append(
        {
            "name": "share of serving nodes with a higher hit rate under cache-aware routing",
            "value": sum(higher.values()) / len(higher) if higher else None,
            "target": 1.0,
            "op": ">=",
            "unit": "",
            "detail": ", ".join(f"{n}: {'yes' if v else 'no'}" for n, v in higher.items()),
        }
    )
    return out


def _tps(run_: dict[str, Any] | None) -> float | None:
    return ((run_ or {}).get("summary") or {}).get("total_tokens_per_s")


# --- the whole run -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Where the bench ran (the controller; the lab's nodes share its CPUs)."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"controller CPUs": os.cpu_count(), "controller memory GiB": round(mem / 2**30, 1)}


@contextlib.contextmanager
def _step(res: Results, name: str) -> Iterator[None]:
    """Record a failed optional step as missing and go on; Ctrl-C still stops the run."""
    try:
        yield
    except Exception as e:
        progress(f"{name} failed: {brief(e)}")
        res.data["missing"].append(f"{name}: failed: {brief(e)}")
        res.save()


def run_bench(o: BenchOptions) -> Path:
    """Run the bench per *o*; returns the results directory (also on failure, with what it has)."""
    loads = validate(o)
    ep = fetch_endpoints(o.inventory)
    if o.dynamo:
        dynamo_bench.require(ep)
    node = o.node or next(iter(ep.serving))
    if node not in ep.serving:
        raise BenchError(f"--node: {node} is not in group serving ({', '.join(ep.serving)})")
    vllm = ep.vllm(node)
    res = Results(o.results_dir)
    progress(f"results: {res.dir}")
    log = res.dir / "ansible.log"
    slo = SLO(ttft_s=o.slo_ttft_ms / 1000, itl_s=o.slo_itl_ms / 1000)
    cs = cells(o)
    plan = schedule(cs, o.repeats, o.seed)
    # Text is drawn per run from --seed and a random salt: the KV server keeps what earlier runs
    # stored (nothing is flushed), so reusing their text would turn cold requests into hits.
    salt = o.seed * 1_000_003 + random.SystemRandom().randrange(1 << 40)
    res.data.update(
        machine=machine(),
        options={k: str(v) if isinstance(v, Path) else v for k, v in asdict(o).items()},
        plan={
            "profiles": [c.label for c in cs] if o.matrix else [],
            "loads": [x.label for x in loads] if o.matrix else [],
            "order": [f"r{r}:{c.label}" for r, c in plan] if o.matrix else [],
            "kv_datapath": o.datapath,
            "probe": o.probe,
            "node": node,
            "content_salt": salt,
            "extra_vars": o.extra_vars,
        },
        ttft_probe=None,
        ttft_probes={},
    )
    res.save()
    switched = False
    try:
        with connection(ep, node) as c:
            for name in ("tokenizer.json", "config.json"):
                c.get(f"{vllm['model_path']}/{name}", str(res.dir / name))
        tok = TokenizerAdapter.from_file(res.dir / "tokenizer.json")
        cfg = json.loads((res.dir / "config.json").read_text())
        heads = cfg["num_attention_heads"]
        bpt = kv_bytes_per_token(
            cfg["num_hidden_layers"],
            cfg.get("num_key_value_heads", heads),
            cfg["hidden_size"] // heads,
            4 if cfg.get("torch_dtype") in ("float32", None) else 2,
        )
        kv_tokens, block = kv_space_tokens(vllm)
        chunk = int(ep.lmcache(node)["chunk_size"])
        res.data["chunk_bytes"] = chunk * bpt
        sample = build_workload(o, tok, kv_tokens, salt)
        ratio = sample.working_set_tokens / kv_tokens
        res.data["workload"] = {
            **sample.summary(bpt),
            "kv_space_tokens": kv_tokens,
            "block_size": block,
            "kv_space_ratio": round(ratio, 2),
        }
        res.data["machine"]["description"] = (
            f"model {vllm['model']} ({bpt} B of KV per token), vLLM KV space {kv_tokens:,} tokens "
            f"({kv_tokens * bpt / MiB:.0f} MiB), node {node}"
        )
        res.save()
        if o.matrix:
            progress(
                f"workload {sample.name}: {sample.requests} requests per run, working set "
                f"{sample.working_set_tokens:,} tokens = {ratio:.1f}x vLLM's KV space"
            )
        current: Cell | None = None
        for i, (rep, cell) in enumerate(plan if o.matrix else []):
            if o.switch and cell != current:
                res.data.setdefault("switch_s", []).append(round(switch(o, [node], cell, log), 1))
                switched = True
                current = cell
            wait_healthy(vllm)
            warm_up(o, vllm, tok, o.warmup, salt + 10_000 + i)
            sources, kinds = metric_sources(ep, [node], lmcache=cell.profile != "none")
            for j, load in enumerate(loads):
                seed = salt + 1000 * (i + 1) + j
                wl = build_workload(o, tok, kv_tokens, seed)
                if not reset_prefix_cache(vllm):
                    res.data["missing"].append(
                        "vLLM prefix cache not emptied between runs (no dev-mode endpoint)"
                    )
                before = m.snapshot_all(sources)
                lc = LoadConfig(
                    vllm["url"],
                    vllm["model"],
                    mode=load.mode,
                    concurrency=int(load.value) if load.mode == "closed" else 1,
                    qps=load.value if load.mode == "open" else None,
                    interleave=True,
                    seed=seed,
                    max_seconds=o.max_seconds,
                    api_key=vllm.get("api_key") or None,
                )
                label = f"[{i * len(loads) + j + 1}/{len(plan) * len(loads)}] {cell.label} {load.label}"
                out = run(wl.conversations, lc, log_progress(label, every=max(10, wl.requests // 10)))
                after = m.snapshot_all(sources)
                deltas, errors = m.deltas_between(before, after)
                for e in errors:
                    if e not in res.data["missing"]:
                        res.data["missing"].append(f"counters: {e}")
                entry = res.add_run(
                    cell.label,
                    load.label,
                    rep,
                    out.records,
                    out.wall_time_s,
                    {**out.meta(), "load": lc.to_dict()},
                    deltas,
                    kinds,
                    {k: v.counters for k, v in after.items()},
                    slo,
                )
                s = entry["summary"]
                progress(
                    f"{label}: {s['total_tokens_per_s']:.0f} tok/s, "
                    f"TTFT P50 {1000 * (s['ttft']['p50'] or 0):.0f} ms, "
                    f"failed {s['failed']}"
                )
            if o.probe and cell.profile == "kv" and cell.label not in res.data["ttft_probes"]:
                with _step(res, f"TTFT probe ({cell.label})"):
                    probe = ttft_probe(
                        vllm, lmcache_source(ep, node), tok, o.preset("probe_n"), salt + 99_000 + i
                    )
                    res.data["ttft_probes"][cell.label] = probe
                    res.data["ttft_probe"] = res.data["ttft_probe"] or probe
                    res.save()
        if o.probe and res.data["ttft_probe"] is None:
            with _step(res, "TTFT probe"):
                res.data.setdefault("switch_s", []).append(round(switch(o, [node], Cell("kv"), log), 1))
                switched = True
                wait_healthy(vllm)
                warm_up(o, vllm, tok, o.warmup, salt + 20_000)
                res.data["ttft_probe"] = ttft_probe(
                    vllm, lmcache_source(ep, node), tok, o.preset("probe_n"), salt + 99_000
                )
                res.data["ttft_probes"]["kv"] = res.data["ttft_probe"]
                res.save()
        if o.datapath:
            with _step(res, "KV data path"):
                progress(f"KV data-path bench on {node}")
                dp = run_datapath(ep, node, tuple(o.preset("datapath_sizes")), o.preset("datapath_n"))
                res.data["kv_datapath"] = dp.get("kv_datapath", [])
                res.data["missing"] += dp.get("missing", [])
                res.save()
        if o.rocksdb:
            with _step(res, "RocksDB engine bench"):
                progress("RocksDB engine bench (Kvrocks tuning profiles, disk and tmpfs)")
                rd = rocksbench.run_rocksdb(
                    sizes=tuple(o.preset("rocksdb_sizes")),
                    n=o.preset("rocksdb_n"),
                    media={"disk": str(o.rocksdb_dir), "tmpfs": "/dev/shm"},
                )
                res.data["rocksdb"] = rd.get("rocksdb", [])
                res.data["missing"] += rd.get("missing", [])
                res.save()
        if o.routing or o.dynamo:
            users = int(Load.parse(o.preset("routing_load")).value)

            def closed_loop(offset: int, api_key: str | None):
                """Load configs of the routing and Dynamo runs: closed loop, own seed per run."""

                def lc_for(url: str, model: str, i: int) -> LoadConfig:
                    return LoadConfig(
                        url,
                        model,
                        concurrency=users,
                        interleave=True,
                        seed=salt + offset + i,
                        max_seconds=o.max_seconds,
                        api_key=api_key,
                    )

                return lc_for

            def fresh(offset: int):
                """Run i's conversations: text nothing has seen, sized like the routing runs."""
                ratio = o.preset("routing_kv_ratio")
                return lambda i: build_workload(o, tok, kv_tokens, salt + offset + i, ratio).conversations

            def saver(key: str):
                def save(result: dict[str, Any]) -> None:
                    res.data[key] = result
                    res.save()

                return save

            # both steps run with the serving nodes on the inventory's tier profile
            for key, on, run_step, offset, api_key in (
                ("routing", o.routing, routing.run_routing, 50_000, vllm.get("api_key") or None),
                ("dynamo", o.dynamo, dynamo_bench.run_dynamo, 70_000, None),
            ):
                if not on:
                    continue
                with _step(res, key):
                    if switched:
                        switch(o, [node], None, log)
                        switched = False
                    res.data[key] = run_step(
                        o.inventory,
                        ep,
                        fresh(offset + 10_000),
                        closed_loop(offset, api_key),
                        res.dir / "runs",
                        log,
                        slo,
                        saver(key),
                    )
                    res.data["missing"] += res.data[key]["missing"]
                    res.save()
        res.data["interrupted"] = False
    except BaseException as e:
        res.data["error"] = brief(e)
        res.data["missing"].append(f"run stopped early: {brief(e)}")
        raise
    finally:
        res.data["targets"] = targets(res.data, res.data.get("workload", {}).get("kv_space_ratio"))
        res.data["finished_at"] = _now()
        res.save()
        try:
            report.write_report(res.dir)
            print(report.summary_table(res.data))
        except Exception as e:  # the raw results are saved; say why the report is not
            progress(f"report not written: {type(e).__name__}: {e} (results.json is complete)")
        progress(f"report: {res.dir / 'report.md'}")
        if switched:
            try:
                switch(o, [node], None, log)
            except BaseException as e:
                progress(
                    f"could not restore the inventory's tier profile ({e}); "
                    "run: fab provision --tags lmcache,vllm"
                )
    return res.dir
