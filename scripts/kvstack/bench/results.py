"""``results/<run id>/``: ``results.json`` rewritten atomically after every step, raw data beside.

Its keys and rows (what :mod:`kvstack.report` reads) are typed in one place,
:mod:`kvstack.results_schema`: :meth:`Results.put` and :meth:`Results.update` take only its keys.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from kvstack import metrics as m
from kvstack.measure import safe_name, write_run
from kvstack.results_schema import ResultsJson, RunEntry, check_key
from kvstack.stats import SLO, RequestResult, summarize


def now() -> str:
    """Local time, to the second, as results.json records it."""
    return dt.datetime.now().isoformat(timespec="seconds")


class Results:
    """``results/<run id>/``: results.json rewritten atomically after each step, raw data beside."""

    def __init__(self, root: Path, run_id: str | None = None) -> None:
        self.run_id = run_id or dt.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
        self.dir = root / self.run_id
        (self.dir / "runs").mkdir(parents=True, exist_ok=False)
        self.data: ResultsJson = {
            "run_id": self.run_id,
            "started_at": now(),
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

    def update(self, **values: Any) -> None:
        """Set top-level keys (each one of :data:`kvstack.results_schema.KEYS`, else
        :class:`~kvstack.results_schema.SchemaError` before anything is set), without saving."""
        for key in values:
            check_key(key)
        self.data.update(values)

    def put(self, key: str, value: Any) -> None:
        """Set one top-level key (one of :data:`kvstack.results_schema.KEYS`) and save."""
        self.update(**{key: value})
        self.save()

    def note_missing(self, *notes: str) -> None:
        """Add notes of what was not measured (each once) and save."""
        for n in notes:
            if n not in self.data["missing"]:
                self.data["missing"].append(n)
        self.save()

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
    ) -> RunEntry:
        """Store one measured run and update the (profile, load) entry merged over repeats."""
        stem = f"{safe_name(profile)}__{safe_name(load)}__r{repeat}"
        rep = {
            "repeat": repeat,
            "file": "runs/" + write_run(self.dir / "runs", stem, records, deltas),
            "wall_s": wall_s,
            "meta": meta,
            "deltas": deltas,
            "records": records,
        }
        reps = self.repeats.setdefault((profile, load), [])
        reps.append(rep)
        all_records = [r for x in reps for r in x["records"]]
        merged = m.merge([x["deltas"] for x in reps], counters)
        entry: RunEntry = {
            "profile": profile,
            "load": load,
            "repeats": [{k: v for k, v in x.items() if k not in ("deltas", "records")} for x in reps],
            "summary": summarize(
                all_records,
                slo=slo,
                wall_time_s=sum(x["wall_s"] for x in reps),
                unsent=sum(x["meta"].get("turns_unsent", 0) for x in reps),
            ).to_dict(),
            "metrics": m.summarize(merged, kinds),
        }
        self.data["runs"] = [r for r in self.data["runs"] if (r["profile"], r["load"]) != (profile, load)]
        self.data["runs"].append(entry)
        self.save()
        return entry
