"""Percentile, latency, throughput and goodput arithmetic against hand-computed cases."""

from __future__ import annotations

import json
import random

import pytest

from kvstack.stats import SLO, Dist, RequestResult, percentile, read_jsonl, summarize, wall_time, write_jsonl

approx = pytest.approx


def five_requests() -> list[RequestResult]:
    """Four successes and one server error with timings chosen so every number is easy by hand.

    One token per event, no per-event counts (so ITL is per chunk); E2E ends at the last token.

    req  start  tokens               end  prompt out  TTFT  ITLs          E2E  TPOT
    r1   0.0    0.5 0.6 0.7 0.8      0.8  100    4    0.5   .1 .1 .1      0.8  0.1
    r2   1.0    1.2 1.5              1.5  200    2    0.2   .3            0.5  0.3
    r3   2.0    3.0 3.2 3.4          4.0  300    3    1.0   .2 .2         1.4  0.2
    r4   2.5    2.9                  3.0   50    1    0.4   -             0.4  -
    r5   3.0    -                    3.1    0    0    failed (HTTP 500)
    """
    return [
        RequestResult(0.0, 0.8, 0.5, [0.5, 0.6, 0.7, 0.8], 100, 4),
        RequestResult(1.0, 1.5, 1.2, [1.2, 1.5], 200, 2),
        RequestResult(2.0, 4.0, 3.0, [3.0, 3.2, 3.4], 300, 3),
        RequestResult(2.5, 3.0, 2.9, [2.9], 50, 1),
        RequestResult(3.0, 3.1, None, [], 0, 0, error="HTTP 500"),
    ]


def test_percentile_linear_interpolation_by_hand():
    assert percentile([1, 2, 3, 4], 50) == 2.5  # rank 1.5
    assert percentile([4, 1, 3, 2], 0) == 1  # order does not matter
    assert percentile([1, 2, 3, 4], 100) == 4
    assert percentile([1, 2, 3, 4], 25) == approx(1.75)  # rank 0.75
    assert percentile([0, 10], 95) == approx(9.5)
    assert percentile([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100], 99) == approx(99.0)  # rank 9.9
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_percentile_matches_numpy_default():
    np = pytest.importorskip("numpy")
    rng = random.Random(1)
    for n in (1, 2, 3, 10, 101):
        xs = [rng.expovariate(1.0) for _ in range(n)]
        for p in (0, 1, 50, 95, 99, 99.9, 100):
            assert percentile(xs, p) == approx(float(np.percentile(xs, p)), rel=1e-12)


def test_request_properties():
    r1, _, _, r4, r5 = five_requests()
    assert r1.ok and r1.ttft == 0.5 and r1.e2e == 0.8
    assert r1.itls == approx([0.1, 0.1, 0.1])
    assert r1.tpot == approx(0.1)
    assert r4.itls == [] and r4.tpot is None and r4.e2e == approx(0.4)
    assert not r5.ok and r5.ttft is None


def test_summary_hand_computed():
    s = summarize(five_requests(), slo=SLO(ttft_s=0.5, tpot_s=0.25))
    assert (s.requests, s.completed, s.failed, s.unsent) == (5, 4, 1, 0) and not s.clean
    # wall time: first start 0.0 to last end 4.0
    assert s.wall_time_s == 4.0
    assert (s.input_tokens, s.output_tokens) == (650, 10)
    assert s.input_tokens_per_s == approx(162.5)
    assert s.output_tokens_per_s == approx(2.5)
    assert s.total_tokens_per_s == approx(165.0)
    assert s.requests_per_s == approx(1.0)
    # TTFT of successes: sorted .2 .4 .5 1.0
    assert s.ttft.count == 4
    assert s.ttft.mean == approx(0.525)
    assert s.ttft.p50 == approx(0.45)  # rank 1.5: .4 + .5 * .1
    assert s.ttft.p95 == approx(0.925)  # rank 2.85: .5 + .85 * .5
    assert s.ttft.p99 == approx(0.985)  # rank 2.97
    assert (s.ttft.min, s.ttft.max) == (approx(0.2), approx(1.0))
    # TPOT per request: .1 .3 .2 (r4: one token, none)
    assert s.tpot.count == 3 and s.tpot.mean == approx(0.2) and s.tpot.p50 == approx(0.2)
    # ITL pooled over all tokens: .1 .1 .1 .2 .2 .3; per chunk (no per-event counts), no read
    # carried two
    assert (s.itl_per, s.itl_multi_token_share) == ("chunk", 0.0)
    assert s.itl.count == 6
    assert s.itl.mean == approx(1.0 / 6)
    assert s.itl.p50 == approx(0.15)  # rank 2.5
    assert s.itl.p95 == approx(0.275)  # rank 4.75
    assert s.itl.p99 == approx(0.295)  # rank 4.95
    # E2E to the last token: .4 .5 .8 1.4
    assert s.e2e.p50 == approx(0.65)  # rank 1.5
    assert s.e2e.p95 == approx(1.31)  # rank 2.85: .8 + .85 * .6
    assert s.e2e.p99 == approx(1.382)
    # goodput: r1 (TTFT .5 <= .5, TPOT .1) and r4 (TTFT .4, no TPOT) meet it; r2 TPOT .3,
    # r3 TTFT 1.0, r5 failed do not
    assert s.good == 2
    assert s.goodput_fraction == approx(0.4)
    assert s.goodput_per_s == approx(0.5)


def test_summary_options_and_edges():
    recs = five_requests()
    assert summarize(recs).good == 4  # no SLO: every success is good
    assert summarize(recs, slo=SLO(ttft_s=0.45)).good == 2  # r2 (.2) and r4 (.4)
    s = summarize(recs, wall_time_s=10.0)
    assert s.input_tokens_per_s == approx(65.0) and s.requests_per_s == approx(0.4)
    empty = summarize([])
    assert empty.requests == 0 and empty.wall_time_s == 0.0 and empty.input_tokens_per_s == 0.0
    assert empty.ttft == Dist(0, None, None, None, None, None, None)
    # a failed request keeps its partial tokens out of the latency statistics
    partial = RequestResult(0.0, None, 0.1, [0.1, 0.2], 10, 0, error="timeout")
    only = summarize([partial])
    assert only.failed == 1 and only.itl.count == 0 and only.ttft.count == 0
    assert wall_time([partial]) == approx(0.2)  # no end: its last token bounds it


def test_record_and_summary_serialize_to_json(tmp_path):
    recs = five_requests()
    write_jsonl(recs, tmp_path / "requests.jsonl")
    assert len((tmp_path / "requests.jsonl").read_text().splitlines()) == 5
    assert read_jsonl(tmp_path / "requests.jsonl") == recs
    back = [RequestResult.from_dict(json.loads(json.dumps(r.to_dict()))) for r in recs]
    assert back == recs
    d = json.loads(json.dumps(summarize(recs, slo=SLO(0.5, 0.25)).to_dict()))
    assert d["ttft"]["p50"] == approx(0.45)
    assert d["slo"] == {"ttft_s": 0.5, "tpot_s": 0.25}
    old = {k: v for k, v in recs[0].to_dict().items() if k != "chunk_tokens"}
    assert RequestResult.from_dict(old) == recs[0]  # records written before chunk_tokens
    assert d["total_tokens_per_s"] == approx(165.0)


def test_multi_token_reads_by_hand():
    """Events 1-2 in one read at 1.0, 3-5 at 1.3, one event of two tokens at 1.5 (7 tokens).

    reads (time, tokens): (1.0, 2) (1.3, 3) (1.5, 2); ITL: .3 over 3 tokens, .2 over 2: five samples
    of .1 (the first read's second token has no gap of its own); TPOT (1.5 - 1.0) / 6."""
    r = RequestResult(0.0, 1.6, 1.0, [1.0, 1.0, 1.3, 1.3, 1.3, 1.5], 10, 7, chunk_tokens=[1, 1, 1, 1, 1, 2])
    assert r.per_token and r.reads() == [(1.0, 2), (1.3, 3), (1.5, 2)]
    assert r.itls == approx([0.1] * 5)
    assert r.tpot == approx(0.5 / 6) and r.e2e == approx(1.5)
    assert r.multi_token_reads == (2, 2)
    # the same stream without per-event counts: one token per event, so per chunk
    c = RequestResult(0.0, 1.6, 1.0, [1.0, 1.0, 1.3, 1.3, 1.3, 1.5], 10, 7)
    assert not c.per_token and c.reads() == [(1.0, 2), (1.3, 3), (1.5, 1)]
    assert c.itls == approx([0.1, 0.1, 0.1, 0.2])
    assert c.tpot == approx(0.5 / 6)  # TPOT takes the server's count either way
    s = summarize([r], slo=SLO(tpot_s=0.08))
    assert (s.itl_per, s.itl_multi_token_share, s.itl.p50, s.good) == ("token", 1.0, approx(0.1), 0)
    assert summarize([r, c]).itl_per == "chunk"  # one request without counts: the run is per chunk
    # a read with no tokens (an empty event) does not end a gap
    e = RequestResult(0.0, 1.0, 0.2, [0.2, 0.4, 0.6], 1, 2, chunk_tokens=[1, 0, 1])
    assert e.itls == approx([0.4]) and e.multi_token_reads == (0, 1)


def test_failed_conversation_counts_against_goodput():
    """Turn 1 of a three-turn conversation failed and turns 2-3 were never sent: 4 planned turns,
    one good; the run is not clean, so no target may use it as met."""
    ok = RequestResult(0.0, 1.0, 0.1, [0.1, 0.2], 10, 2, conversation="a", turn=0)
    bad = RequestResult(1.0, 1.1, None, [], 0, 0, error="HTTP 500", conversation="a", turn=1)
    s = summarize([ok, bad], unsent=2)
    assert (s.requests, s.completed, s.failed, s.unsent) == (2, 1, 1, 2)
    assert s.goodput_fraction == approx(0.25) and not s.clean
    assert summarize([ok]).clean
