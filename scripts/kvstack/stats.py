"""Per-request benchmark records and their summary: latency percentiles, throughput, goodput.

A :class:`RequestResult` holds what a streaming client saw for one request, as timestamps from one
monotonic clock (``time.perf_counter()``); only differences are used. The definitions follow
vLLM's benchmark client and AIPerf, so their numbers can be set side by side:

- TTFT: first token's arrival - request start;
- E2E: last token's arrival - request start (not the end of the HTTP exchange);
- TPOT (per request): (last token - first token) / (output tokens - 1), the output tokens counted
  by the server (the usage chunk), not by chunks; AIPerf calls this per-request figure ITL;
- ITL (pooled over the tokens of all requests): the client stamps each socket read, and a read can
  carry several tokens (several stream events, or one event with several tokens). Each gap between
  two reads is spread evenly over the tokens the later read carried, so there is one sample per
  token after the first read and the samples of a request add up to its last - first token time.
  The tokens per event come from vLLM's per-chunk usage (``continuous_usage_stats``): with it the
  ITL is *per token*; without it each event counts as one token and the ITL is *per chunk*. The
  share of reads that carried more than one token is reported beside it
  (``itl_multi_token_share``): near 0 the per-token figure is what the stream showed; near 1 the
  stream was too bursty for a per-token view and TPOT is the figure to read.

:func:`summarize` turns a run's records into a :class:`Summary`: those latencies over successful
requests; throughput over the run's wall time (first start to last end, or given): input and
output tokens/s and requests/s of successful requests; the failed requests and the turns never sent
because an earlier turn of their conversation failed (``unsent``); goodput under an :class:`SLO`
(TTFT and TPOT limits) as a fraction of every planned turn (failed and unsent ones miss it) and as
a rate.

Percentiles interpolate linearly between order statistics, like ``numpy.percentile``'s default.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RequestResult:
    """One request as the client saw it; times are seconds on one monotonic clock.

    ``token_times`` holds the arrival time of each streamed event that carried a choice, the first
    one included (``token_times[0] == first_token_time``); events parsed from one socket read share
    its time. ``chunk_tokens[i]`` is how many tokens event *i* carried (from the server's per-chunk
    usage; empty when the server did not send it). ``output_tokens`` is the server's count (the final
    usage chunk). ``error`` is None for a success; a failed request keeps what it measured.
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
    chunk_tokens: list[int] = field(default_factory=list)

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
        """Start to the last token's arrival in seconds (to the end, when no token arrived), or None
        if the request never ended."""
        if self.token_times:
            return self.token_times[-1] - self.start
        return None if self.end is None else self.end - self.start

    @property
    def per_token(self) -> bool:
        """True when every event's token count is known (per-chunk usage)."""
        return bool(self.token_times) and len(self.chunk_tokens) == len(self.token_times)

    def reads(self) -> list[tuple[float, int]]:
        """``(arrival time, tokens)`` per socket read that carried events (events of one read share
        its time); one token per event when the per-event counts are unknown."""
        counts = self.chunk_tokens if self.per_token else [1] * len(self.token_times)
        out: list[tuple[float, int]] = []
        for t, k in zip(self.token_times, counts, strict=True):
            if out and out[-1][0] == t:
                out[-1] = (t, out[-1][1] + k)
            else:
                out.append((t, k))
        return out

    @property
    def itls(self) -> list[float]:
        """Inter-token latencies in seconds: each gap between reads spread evenly over the tokens
        the later read carried (reads without tokens do not end a gap)."""
        rd = self.reads()
        if not rd:
            return []
        out: list[float] = []
        prev = rd[0][0]
        for t, k in rd[1:]:
            if k > 0:
                out += [(t - prev) / k] * k
                prev = t
        return out

    @property
    def multi_token_reads(self) -> tuple[int, int]:
        """``(reads after the first that carried more than one token, reads after the first with
        tokens)``."""
        ks = [k for _, k in self.reads()[1:] if k > 0]
        return sum(1 for k in ks if k > 1), len(ks)

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: (last - first token) / (output tokens - 1), with
        the server's token count; None with fewer than two tokens."""
        if self.first_token_time is None or not self.token_times or self.output_tokens < 2:
            return None
        return (self.token_times[-1] - self.first_token_time) / (self.output_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (one JSONL line of a run's raw data)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RequestResult:
        """Inverse of :meth:`to_dict` (records written before ``chunk_tokens`` load too)."""
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
    """A service-level objective for goodput: TTFT and TPOT limits in seconds (None: no limit)."""

    ttft_s: float | None = None
    tpot_s: float | None = None

    def met(self, r: RequestResult) -> bool:
        """True when *r* succeeded within both limits (a single-token answer has no TPOT to miss)."""
        if not r.ok:
            return False
        if self.ttft_s is not None and (r.ttft is None or r.ttft > self.ttft_s):
            return False
        tpot = r.tpot
        return not (self.tpot_s is not None and tpot is not None and tpot > self.tpot_s)


@dataclass(frozen=True)
class Summary:
    """What one run measured; see the module docstring for definitions."""

    requests: int
    completed: int
    failed: int
    #: turns never sent because an earlier turn of their conversation failed
    unsent: int
    wall_time_s: float
    input_tokens: int
    output_tokens: int
    input_tokens_per_s: float
    output_tokens_per_s: float
    requests_per_s: float
    ttft: Dist
    tpot: Dist
    itl: Dist
    #: "token" (per-chunk usage known for every request) or "chunk"
    itl_per: str
    #: share of reads after the first that carried more than one token (None: no such reads)
    itl_multi_token_share: float | None
    e2e: Dist
    slo: SLO
    good: int
    goodput_fraction: float
    goodput_per_s: float

    @property
    def total_tokens_per_s(self) -> float:
        """Input plus output tokens per second."""
        return self.input_tokens_per_s + self.output_tokens_per_s

    @property
    def clean(self) -> bool:
        """True when no request failed and no turn went unsent (a target may use the run)."""
        return self.failed == 0 and self.unsent == 0

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


def _itl_view(ok: Sequence[RequestResult]) -> tuple[str, float | None]:
    """``(itl_per, itl_multi_token_share)`` of the successful requests."""
    per = "token" if ok and all(r.per_token for r in ok) else "chunk"
    multi = [r.multi_token_reads for r in ok]
    reads = sum(n for _, n in multi)
    return per, (sum(m for m, _ in multi) / reads if reads else None)


def latencies(records: Iterable[RequestResult], name: str) -> list[float]:
    """The completed requests' *name* (``ttft``, ``tpot`` or ``e2e``), seconds, where defined: the
    samples the summary's distributions and the intervals are taken over."""
    return [v for r in records if r.ok and (v := getattr(r, name)) is not None]


def summarize(
    records: Sequence[RequestResult],
    *,
    slo: SLO | None = None,
    wall_time_s: float | None = None,
    unsent: int = 0,
) -> Summary:
    """Summarize a run's *records*; *wall_time_s* defaults to :func:`wall_time` of the records;
    *unsent* is the run's turns never sent after a failed turn (they count against goodput)."""
    slo = slo or SLO()
    ok = [r for r in records if r.ok]
    wall = wall_time(records) if wall_time_s is None else wall_time_s
    n_in = sum(r.prompt_tokens for r in ok)
    n_out = sum(r.output_tokens for r in ok)
    good = sum(1 for r in records if slo.met(r))
    planned = len(records) + unsent
    itl_per, multi = _itl_view(ok)

    def rate(x: float) -> float:
        return x / wall if wall > 0 else 0.0

    return Summary(
        requests=len(records),
        completed=len(ok),
        failed=len(records) - len(ok),
        unsent=unsent,
        wall_time_s=wall,
        input_tokens=n_in,
        output_tokens=n_out,
        input_tokens_per_s=rate(n_in),
        output_tokens_per_s=rate(n_out),
        requests_per_s=rate(len(ok)),
        ttft=Dist.of(latencies(ok, "ttft")),
        tpot=Dist.of(latencies(ok, "tpot")),
        itl=Dist.of(x for r in ok for x in r.itls),
        itl_per=itl_per,
        itl_multi_token_share=multi,
        e2e=Dist.of(latencies(ok, "e2e")),
        slo=slo,
        good=good,
        goodput_fraction=good / planned if planned else 0.0,
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
