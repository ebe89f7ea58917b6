"""One measured load run, the same for every step that sends load (the bench matrix, routing,
Dynamo): counters snapshotted before and after, and the raw requests and counter deltas written
beside the results as ``<stem>.jsonl`` and ``<stem>.metrics.json``. :func:`config_run` is that
run for one configuration of the routing and Dynamo benches, its files written and summarized."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvstack import loadgen
from kvstack import metrics as m
from kvstack.stats import SLO, RequestResult, summarize, write_jsonl


@dataclass
class Measured:
    """One load run with the counters read around it."""

    out: loadgen.RunResult
    deltas: dict[str, dict[str, float]]
    #: sources that could not be read (the run goes on; the report says what is missing)
    errors: list[str]
    #: per source, the names that are counters
    counters: dict[str, set[str]]


def measured_run(
    conversations: list,
    lc: loadgen.LoadConfig,
    sources: list[m.Source],
    progress: loadgen.Progress | None = None,
    more: Sequence[list] = (),
) -> Measured:
    """Run *conversations* with *lc*, *sources*' counters snapshotted before and after; with
    *more*, each of those conversation sets after it, one run at a time, as one measured run
    (:func:`kvstack.loadgen.merged`: the working set stays one set's, the sample grows)."""
    before = m.snapshot_all(sources)
    out = loadgen.merged([loadgen.run(c, lc, progress) for c in (conversations, *more)])
    after = m.snapshot_all(sources)
    deltas, errors = m.deltas_between(before, after)
    return Measured(out, deltas, errors, {k: v.counters for k, v in after.items()})


def safe_name(s: str) -> str:
    """*s* as a file name (anything but letters, digits, ``_.-`` becomes ``-``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s)


def write_run(
    out_dir: Path, stem: str, records: list[RequestResult], deltas: dict[str, dict[str, float]]
) -> str:
    """``out_dir/<stem>.jsonl`` (the requests) and ``<stem>.metrics.json`` (the deltas); the
    JSONL's name."""
    write_jsonl(records, out_dir / f"{stem}.jsonl")
    (out_dir / f"{stem}.metrics.json").write_text(json.dumps(deltas, indent=1, sort_keys=True))
    return f"{stem}.jsonl"


@dataclass
class ConfigRun:
    """One configuration's measured run (routing, Dynamo), as its results.json entry uses it."""

    #: :meth:`kvstack.stats.Summary.to_dict` of its requests
    summary: dict[str, Any]
    deltas: dict[str, dict[str, float]]
    #: sources that could not be read
    errors: list[str]
    #: the requests' JSONL, relative to the results directory (``runs/<kind>__<label>.jsonl``)
    file: str


def config_run(
    kind: str,
    label: str,
    passes: Sequence[list],
    lc: loadgen.LoadConfig,
    sources: list[m.Source],
    out_dir: Path,
    slo: SLO,
) -> ConfigRun:
    """:func:`measured_run` of configuration *label* of bench *kind* over *passes* (conversation
    sets run one after another; progress logged as ``<kind> <label>``); the requests go to
    ``out_dir/<kind>__<label>.jsonl`` and the counter deltas beside them (:func:`write_run`), the
    summary is against *slo*."""
    first, *more = passes
    prog = loadgen.log_progress(f"{kind} {label}", every=max(10, len(first)))
    mr = measured_run(first, lc, sources, prog, more)
    name = write_run(out_dir, f"{kind}__{safe_name(label)}", mr.out.records, mr.deltas)
    summary = summarize(
        mr.out.records, slo=slo, wall_time_s=mr.out.wall_time_s, unsent=mr.out.turns_unsent
    ).to_dict()
    return ConfigRun(summary, mr.deltas, mr.errors, f"runs/{name}")
