"""Per-request benchmark records and their summary: latency percentiles, throughput, goodput.

A :class:`RequestResult` holds what a streaming client saw for one request, as timestamps from one
monotonic clock (``time.perf_counter()``); only differences are used. :func:`summarize` turns a
run's records into a :class:`Summary`:

- latencies, over successful requests only: TTFT (first token - start), E2E (end - start) and ITL
  (gaps between consecutive token arrivals, pooled over all tokens of all requests);
- throughput over the run's wall time (first start to last end of any record, or given): input and
  output tokens/s and requests/s, counting successful requests;
- goodput under an :class:`SLO`: requests that succeeded with TTFT <= ``ttft_s`` and a mean ITL
  <= ``itl_s``, as a fraction of all requests (failed ones count as missing the SLO) and as a rate;
- the failed-request count.

Percentiles interpolate linearly between order statistics, like ``numpy.percentile``'s default.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RequestResult:
    """One request as the client saw it; times are seconds on one monotonic clock.

    ``token_times`` holds the arrival time of each streamed token chunk, the first one included
    (so ``token_times[0] == first_token_time`` when both are set). ``output_tokens`` is the server's
    count (the usage chunk), which can exceed ``len(token_times)`` when a chunk carries several
    tokens. ``error`` is None for a success; a failed request keeps what it measured before failing.
    """

    start: float
    end: float | None = None
    first_token_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    conversation: str = ""
    turn: int = 0

    @property
    def ok(self) -> bool:
        """True when the request completed without an error."""
        return self.error is None and self.end is not None

    @property
    def ttft(self) -> float | None:
        """Time to first token in seconds, or None if no token arrived."""
        return None if self.first_token_time is None else self.first_token_time - self.start

    @property
    def e2e(self) -> float | None:
        """End-to-end latency in seconds, or None if the request never ended."""
        return None if self.end is None else self.end - self.start

    @property
    def itls(self) -> list[float]:
        """Gaps between consecutive token arrivals, in seconds."""
        t = self.token_times
        return [b - a for a, b in itertools.pairwise(t)]

    @property
    def mean_itl(self) -> float:
        """Mean inter-token latency of this request (0.0 with fewer than two token arrivals)."""
        t = self.token_times
        return (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (one JSONL line of a run's raw data)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RequestResult:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)


def percentile(values: Sequence[float], p: float) -> float | None:
    """The *p*-th percentile (0-100) with linear interpolation (numpy's default); None when empty."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {p}")
    if not values:
        return None
    xs = sorted(values)
    rank = p / 100 * (len(xs) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


@dataclass(frozen=True)
class Dist:
    """Summary of one latency distribution, in seconds; all None when there are no samples."""

    count: int
    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    min: float | None
    max: float | None

    @classmethod
    def of(cls, values: Iterable[float]) -> Dist:
        """Summarize *values*."""
        xs = sorted(values)
        if not xs:
            return cls(0, None, None, None, None, None, None)
        return cls(
            count=len(xs),
            mean=sum(xs) / len(xs),
            p50=percentile(xs, 50),
            p95=percentile(xs, 95),
            p99=percentile(xs, 99),
            min=xs[0],
            max=xs[-1],
        )


@dataclass(frozen=True)
class SLO:
    """A service-level objective for goodput: TTFT and mean ITL limits in seconds (None: no limit)."""

    ttft_s: float | None = None
    itl_s: float | None = None

    def met(self, r: RequestResult) -> bool:
        """True when *r* succeeded within both limits."""
        if not r.ok:
            return False
        if self.ttft_s is not None and (r.ttft is None or r.ttft > self.ttft_s):
            return False
        return not (self.itl_s is not None and r.mean_itl > self.itl_s)


@dataclass(frozen=True)
class Summary:
    """What one run measured; see the module docstring for definitions."""

    requests: int
    completed: int
    failed: int
    wall_time_s: float
    input_tokens: int
    output_tokens: int
    input_tokens_per_s: float
    output_tokens_per_s: float
    requests_per_s: float
    ttft: Dist
    itl: Dist
    e2e: Dist
    slo: SLO
    good: int
    goodput_fraction: float
    goodput_per_s: float

    @property
    def total_tokens_per_s(self) -> float:
        """Input plus output tokens per second."""
        return self.input_tokens_per_s + self.output_tokens_per_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (the report reads this shape)."""
        d = asdict(self)
        d["total_tokens_per_s"] = self.total_tokens_per_s
        return d


def wall_time(records: Sequence[RequestResult]) -> float:
    """Seconds from the earliest start to the latest end (or last token/start) over *records*."""
    if not records:
        return 0.0
    ends = [r.end if r.end is not None else max([r.start, *r.token_times]) for r in records]
    return max(ends) - min(r.start for r in records)


def summarize(
    records: Sequence[RequestResult], *, slo: SLO | None = None, wall_time_s: float | None = None
) -> Summary:
    """Summarize a run's *records*; *wall_time_s* defaults to :func:`wall_time` of the records."""
    slo = slo or SLO()
    ok = [r for r in records if r.ok]
    wall = wall_time(records) if wall_time_s is None else wall_time_s
    n_in = sum(r.prompt_tokens for r in ok)
    n_out = sum(r.output_tokens for r in ok)
    good = sum(1 for r in records if slo.met(r))

    def rate(x: float) -> float:
        return x / wall if wall > 0 else 0.0

    return Summary(
        requests=len(records),
        completed=len(ok),
        failed=len(records) - len(ok),
        wall_time_s=wall,
        input_tokens=n_in,
        output_tokens=n_out,
        input_tokens_per_s=rate(n_in),
        output_tokens_per_s=rate(n_out),
        requests_per_s=rate(len(ok)),
        ttft=Dist.of(r.ttft for r in ok if r.ttft is not None),
        itl=Dist.of(x for r in ok for x in r.itls),
        e2e=Dist.of(r.e2e for r in ok if r.e2e is not None),
        slo=slo,
        good=good,
        goodput_fraction=good / len(records) if records else 0.0,
        goodput_per_s=rate(good),
    )


def write_jsonl(records: Iterable[RequestResult], path: str | Path) -> None:
    """Write *records* as JSON lines (a run's raw data)."""
    with Path(path).open("w") as f:
        for r in records:
            f.write(json.dumps(r.to_dict()) + "\n")


def read_jsonl(path: str | Path) -> list[RequestResult]:
    """Read records written by :func:`write_jsonl`."""
    with Path(path).open() as f:
        return [RequestResult.from_dict(json.loads(line)) for line in f if line.strip()]
