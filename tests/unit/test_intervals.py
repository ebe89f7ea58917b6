"""The interval arithmetic and the verdict: hand-computed cases, a seeded and repeatable bootstrap,
its coverage on samples with a known ratio, and "met" refused while the interval straddles the line."""

from __future__ import annotations

import random

import pytest

from kvstack import intervals as iv
from kvstack.stats import RequestResult


def test_constant_samples_give_a_point_interval():
    out = iv.bootstrap_ratio([2.0] * 5, [1.0] * 7, iv.mean, seed=1, resamples=200)
    assert out is not None
    assert (out.value, out.lo, out.hi) == (2.0, 2.0, 2.0)
    assert (out.n_a, out.n_b, out.resamples, out.conf) == (5, 7, 200, 0.95)
    assert out.to_dict()["value"] == 2.0


def test_bootstrap_is_seeded_and_brackets_the_point():
    rng = random.Random(3)
    a = [rng.uniform(1, 3) for _ in range(30)]
    b = [rng.uniform(1, 2) for _ in range(30)]
    one = iv.bootstrap_ratio(a, b, iv.p(50), seed=7, resamples=500)
    assert one == iv.bootstrap_ratio(a, b, iv.p(50), seed=7, resamples=500)  # same seed, same interval
    assert one != iv.bootstrap_ratio(a, b, iv.p(50), seed=8, resamples=500)
    assert one.lo < one.value < one.hi
    assert one.value == pytest.approx(iv.p(50)(a) / iv.p(50)(b))


def test_too_few_samples_or_zero_give_no_interval():
    assert iv.bootstrap_ratio([1.0], [1.0, 2.0], iv.mean) is None
    assert iv.bootstrap_ratio([1.0, 2.0], [], iv.mean) is None
    assert iv.bootstrap_ratio([1.0, 2.0], [0.0, 0.0], iv.mean) is None
    assert iv.mean([]) is None and iv.mean([1.0, 3.0]) == 2.0


def test_coverage_on_known_ratio():
    """Exponential samples with means 2 and 1 (true ratio 2): the 95% interval of the ratio of
    means holds 2 in most of 60 independent trials (a percentile bootstrap runs a little under its
    nominal level at n=40; far under would mean broken arithmetic)."""
    rng = random.Random(11)
    hits = 0
    for t in range(60):
        a = [rng.expovariate(0.5) for _ in range(40)]
        b = [rng.expovariate(1.0) for _ in range(40)]
        out = iv.bootstrap_ratio(a, b, iv.mean, seed=t, resamples=400)
        hits += out.lo <= 2.0 <= out.hi
    assert hits >= 50, hits


def test_conversation_work_by_hand():
    """Conversation a: two turns (10+2 tokens in 0.5 s, 20+2 in 0.5 s); b: one success (5+1 in
    1.0 s) and a failure that still took 0.7 s; a request without a conversation stands alone."""
    recs = [
        RequestResult(0.0, 0.5, 0.2, [0.2, 0.5], 10, 2, conversation="a"),
        RequestResult(1.0, 1.5, 1.2, [1.2, 1.5], 20, 2, conversation="a"),
        RequestResult(1.0, 1.7, None, [], 0, 0, error="HTTP 500", conversation="b"),
        RequestResult(3.0, 4.0, 3.9, [3.9], 5, 1, conversation="b"),
        RequestResult(5.0, 5.25, 5.1, [5.1], 3, 1),
    ]
    work = iv.conversation_work(recs)
    assert [x for pair in work for x in pair] == pytest.approx([34.0, 1.0, 6.0, 1.7, 4.0, 0.25])
    assert iv.busy_rate(work) == pytest.approx(44 / 2.95)
    assert iv.busy_rate([]) is None
    assert iv.conversation_work([]) == []


def test_rescaled_keeps_relative_spread():
    """An estimator's interval 0.8-1.2 around 1.0, moved to a measured 0.9: 0.72-1.08."""
    est = iv.Interval(1.0, 0.8, 1.2, 0.95, 100, 5, 5)
    out = iv.rescaled(est, 0.9)
    assert (out.value, out.lo, out.hi) == pytest.approx((0.9, 0.72, 1.08))
    assert (out.n_a, out.resamples) == (5, 100)
    assert iv.rescaled(None, 0.9) is None
    assert iv.rescaled(est, None) is None


def test_busy_rate_interval_narrow_for_steady_runs():
    """Twenty conversations per configuration, top 5-10% faster per request-second than base:
    the ratio's interval holds the true ratio and is narrower than +-10% (windows gave 0.2-10x)."""
    rng = random.Random(3)
    top = [(100.0, rng.uniform(0.9, 1.0)) for _ in range(20)]
    base = [(100.0, rng.uniform(1.0, 1.1)) for _ in range(20)]
    out = iv.bootstrap_ratio(top, base, iv.busy_rate, seed=1)
    true = iv.busy_rate(top) / iv.busy_rate(base)
    assert out.lo <= true <= out.hi
    assert out.hi / out.lo < 1.2


@pytest.mark.parametrize(
    ("value", "lo", "hi", "op", "failures", "expected"),
    [
        (3.5, 3.1, 3.9, ">=", 0, "met"),
        (3.5, 2.9, 3.9, ">=", 0, "inconclusive"),  # the point clears 3, the interval does not
        (2.5, 2.0, 2.9, ">=", 0, "missed"),
        (1.1, 1.0, 1.2, "<=", 0, "met"),
        (1.1, 0.9, 1.3, "<=", 0, "inconclusive"),
        (1.4, 1.3, 1.5, "<=", 0, "missed"),
        (3.5, 3.1, 3.9, ">=", 2, "not met: failures"),  # a clean interval from a run with failures
        (3.5, None, None, ">=", 0, "no interval"),
        (None, None, None, ">=", 0, "not measured"),
    ],
)
def test_verdict(value, lo, hi, op, failures, expected):
    target = 3.0 if op == ">=" else 1.25
    assert iv.verdict(value, lo, hi, op, target, failures) == expected


def test_verdict_rejects_an_unknown_operator():
    with pytest.raises(ValueError):
        iv.verdict(1.0, 0.9, 1.1, "==", 1.0)


def test_groups_widen_with_spread_between_runs():
    """Two runs per side, each steady inside (a one-run interval would be a point) but 20% apart
    on the top side: the grouped interval spans both runs' ratios; one group per side is the
    plain bootstrap, same seed same interval; empty groups are left out."""
    base = [[(100.0, 1.0)] * 10, [(100.0, 1.0)] * 10]
    top = [[(180.0, 1.0)] * 10, [(220.0, 1.0)] * 10]
    out = iv.bootstrap_groups(top, base, iv.busy_rate, seed=4, resamples=400)
    assert out.value == pytest.approx(2.0) and out.n_a == 20
    assert out.lo == pytest.approx(1.8) and out.hi == pytest.approx(2.2)
    one = iv.bootstrap_groups([top[0]], [base[0]], iv.busy_rate, seed=4, resamples=400)
    assert (one.lo, one.hi) == (pytest.approx(1.8), pytest.approx(1.8))
    plain = iv.bootstrap_ratio([1.0, 2.0, 4.0], [1.0, 1.5], iv.mean, seed=9, resamples=300)
    assert plain == iv.bootstrap_groups([[1.0, 2.0, 4.0], []], [[1.0, 1.5]], iv.mean, seed=9, resamples=300)
