"""Confidence intervals for the ratios the targets use, and the verdict a target gets from one.

Each target compares two samples (two configurations' requests, or time windows of their runs)
through a statistic (a percentile, a mean rate). :func:`bootstrap_ratio` resamples both samples
with replacement, independently, ``n`` times from a seeded generator and takes the percentile
interval of ``stat(a*) / stat(b*)``; the point value is ``stat(a) / stat(b)`` on the samples as
measured. :func:`window_rates` turns a run's requests into tokens/s per time window, so a
throughput ratio gets an interval from one run per configuration (more windows per repeat).

:func:`verdict` is the one place a target is called met: only when the interval clears the line
and the runs behind it had no failed request and no unsent turn. An interval that straddles the
line is "inconclusive", whatever the point value says.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from kvstack.stats import RequestResult, percentile

Stat = Callable[[Sequence[float]], float | None]

#: the bootstrap's resamples and confidence level, unless a caller says otherwise
RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A ratio and its two-sided confidence interval (``conf``, from ``resamples`` resamples of
    samples of sizes ``n_a`` and ``n_b``)."""

    value: float
    lo: float
    hi: float
    conf: float
    resamples: int
    n_a: int
    n_b: int

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready fields (a target row carries them)."""
        return dict(self.__dict__)


def p(q: float) -> Stat:
    """The *q*-th percentile as a statistic."""
    return lambda xs: percentile(xs, q)


def mean(xs: Sequence[float]) -> float | None:
    """The arithmetic mean (None when empty)."""
    return sum(xs) / len(xs) if xs else None


def bootstrap_ratio(
    a: Sequence[float],
    b: Sequence[float],
    stat: Stat,
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    conf: float = CONFIDENCE,
) -> Interval | None:
    """``stat(a) / stat(b)`` with its percentile-bootstrap interval; None when either sample has
    fewer than two values or a statistic is not positive."""
    if len(a) < 2 or len(b) < 2:
        return None
    sa, sb = stat(a), stat(b)
    if not sa or not sb or sa <= 0 or sb <= 0:
        return None
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        ra = stat(rng.choices(a, k=len(a)))
        rb = stat(rng.choices(b, k=len(b)))
        if ra is not None and rb:
            ratios.append(ra / rb)
    tail = (1 - conf) / 2 * 100
    return Interval(
        value=sa / sb,
        lo=percentile(ratios, tail) or 0.0,
        hi=percentile(ratios, 100 - tail) or 0.0,
        conf=conf,
        resamples=resamples,
        n_a=len(a),
        n_b=len(b),
    )


def window_rates(records: Sequence[RequestResult], windows: int = 10) -> list[float]:
    """Tokens/s (prompt + output of successful requests) in *windows* equal slices of the run's
    span (first start to last token or end), each request counted in the slice its last token fell
    in. Their mean is the run's tokens/s over that span."""
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    if not records:
        return []
    t0 = min(r.start for r in records)
    ends = {id(r): (r.token_times[-1] if r.token_times else (r.end or r.start)) for r in records}
    span = max(max(ends.values()), max(r.end or r.start for r in records)) - t0
    if span <= 0:
        return []
    width = span / windows
    tokens = [0.0] * windows
    for r in records:
        if r.ok:
            i = min(int((ends[id(r)] - t0) / width), windows - 1)
            tokens[i] += r.prompt_tokens + r.output_tokens
    return [x / width for x in tokens]


Verdict = Literal["met", "missed", "inconclusive", "not met: failures", "no interval", "not measured"]


def verdict(
    value: float | None,
    lo: float | None,
    hi: float | None,
    op: str,
    target: float,
    failures: int = 0,
) -> Verdict:
    """A target's status: met only when the whole interval is on the right side of *target*
    (``op`` ``>=`` or ``<=``) and the runs behind it had no *failures* (failed requests plus
    unsent turns); missed when the whole interval is on the wrong side."""
    if op not in (">=", "<="):
        raise ValueError(f"op must be >= or <=, got {op}")
    if value is None:
        return "not measured"
    if failures:
        return "not met: failures"
    if lo is None or hi is None:
        return "no interval"
    good_lo, good_hi = (lo >= target, hi >= target) if op == ">=" else (hi <= target, lo <= target)
    if good_lo:
        return "met"
    return "inconclusive" if good_hi else "missed"
