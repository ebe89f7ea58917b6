"""Confidence intervals for the ratios the targets use, and the verdict a target gets from one.

Each target compares two samples (two configurations' requests, or their conversations' work)
through a statistic (a percentile, a rate). :func:`bootstrap_ratio` resamples both samples
with replacement, independently, ``n`` times from a seeded generator and takes the percentile
interval of ``stat(a*) / stat(b*)``; the point value is ``stat(a) / stat(b)`` on the samples as
measured.

With ``--repeats`` a configuration has several runs: :func:`bootstrap_groups` resamples the
runs, then the units within each, so run-to-run spread widens the interval. (On the lab, three
runs of the same ``kv`` vs ``none`` gave 1.69x, 1.96x and 1.86x, each with a one-run interval
of about +-5%: one run's interval does not cover the spread between runs.)

Throughput: a closed-loop run keeps ``c`` requests in flight, so by Little's law its tokens/s is
``c`` x (tokens of its requests) / (sum of their durations). :func:`conversation_work` gives each
conversation's (tokens, request-seconds), the unit resampled (turns of one conversation depend on
each other); :func:`busy_rate` is the statistic, and :func:`rescaled` centres its relative spread
on the ratio of the runs' wall-clock tokens/s, the figure the report prints. (Time windows of a
run were tried first: with tens of requests per run most windows held none, and the interval of a
0.9x ratio spanned 0.2x-10x.)

:func:`verdict` is the one place a target is called met: only when the interval clears the line
and the runs behind it had no failed request and no unsent turn. An interval that straddles the
line is "inconclusive", whatever the point value says.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from kvstack.stats import RequestResult, percentile

Stat = Callable[[Sequence[Any]], float | None]

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
    a: Sequence[Any],
    b: Sequence[Any],
    stat: Stat,
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    conf: float = CONFIDENCE,
) -> Interval | None:
    """``stat(a) / stat(b)`` with its percentile-bootstrap interval; None when either sample has
    fewer than two values or a statistic is not positive."""
    return bootstrap_groups([a], [b], stat, seed=seed, resamples=resamples, conf=conf)


def bootstrap_groups(
    a: Sequence[Sequence[Any]],
    b: Sequence[Sequence[Any]],
    stat: Stat,
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    conf: float = CONFIDENCE,
) -> Interval | None:
    """As :func:`bootstrap_ratio` over samples made of groups (a configuration's repeated runs):
    each resample draws the groups with replacement, then the values within each drawn group, so
    the interval widens with the spread between runs, not only within them. One group per side
    is the plain bootstrap. Empty groups are left out."""
    ga, gb = [list(g) for g in a if g], [list(g) for g in b if g]
    flat_a, flat_b = [x for g in ga for x in g], [x for g in gb for x in g]
    if len(flat_a) < 2 or len(flat_b) < 2:
        return None
    sa, sb = stat(flat_a), stat(flat_b)
    if not sa or not sb or sa <= 0 or sb <= 0:
        return None
    rng = random.Random(seed)

    def draw(groups: list[list[Any]]) -> list[Any]:
        picked = rng.choices(groups, k=len(groups)) if len(groups) > 1 else groups
        return [x for g in picked for x in rng.choices(g, k=len(g))]

    ratios = []
    for _ in range(resamples):
        ra, rb = stat(draw(ga)), stat(draw(gb))
        if ra is not None and rb:
            ratios.append(ra / rb)
    tail = (1 - conf) / 2 * 100
    return Interval(
        value=sa / sb,
        lo=percentile(ratios, tail) or 0.0,
        hi=percentile(ratios, 100 - tail) or 0.0,
        conf=conf,
        resamples=resamples,
        n_a=len(flat_a),
        n_b=len(flat_b),
    )


def conversation_work(records: Sequence[RequestResult]) -> list[tuple[float, float]]:
    """Per conversation (each request without one on its own): the prompt + output tokens of its
    successful requests and the seconds all its requests took (start to end, failures included)."""
    work: dict[str, list[float]] = {}
    for i, r in enumerate(records):
        w = work.setdefault(r.conversation or f"#{i}", [0.0, 0.0])
        if r.ok:
            w[0] += r.prompt_tokens + r.output_tokens
        w[1] += max(0.0, (r.end if r.end is not None else r.start) - r.start)
    return [(t, s) for t, s in work.values()]


def busy_rate(work: Sequence[tuple[float, float]]) -> float | None:
    """Tokens per request-second over *work* (:func:`conversation_work`'s pairs); None without time."""
    seconds = sum(s for _, s in work)
    return sum(t for t, _ in work) / seconds if seconds > 0 else None


def rescaled(interval: Interval | None, value: float | None) -> Interval | None:
    """*interval* moved to centre on *value*: its bounds scaled by ``value / interval.value`` (the
    estimator's relative spread around the figure measured another way)."""
    if interval is None or value is None or interval.value <= 0:
        return None
    k = value / interval.value
    return replace(interval, value=value, lo=interval.lo * k, hi=interval.hi * k)


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
