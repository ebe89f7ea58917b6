"""kvstack.faults' figures of load across an action, from synthetic request records."""

from __future__ import annotations

from kvstack.faults import summarize_across
from kvstack.stats import RequestResult


def req(start: float, end: float | None, error: str | None = None) -> RequestResult:
    return RequestResult(start=start, end=end, error=error)


def test_gap_failures_and_recovery_around_the_action():
    # completions every second; the action runs 10.0-11.0 s; nothing completes from 10.5 to 14.0
    records = [req(t - 0.5, t) for t in (8.0, 9.0, 10.0, 10.5, 14.0, 15.0)]
    records += [req(10.2, 12.0, "HTTP 503"), req(10.3, 12.1, "HTTP 503")]
    out = summarize_across(records, action_start=10.0, action_end=11.0)
    assert (out.requests, out.failed, out.errors) == (8, 2, ["HTTP 503"])
    assert out.longest_gap_s == 3.5
    assert out.recovered_s == 4.0  # the first request started after 11.0 (at 13.5) ended at 14.0
    assert out.action_s == 1.0


def test_no_request_after_the_action_is_no_recovery():
    out = summarize_across([req(0.0, 1.0), req(1.0, 2.0)], action_start=3.0, action_end=4.0)
    assert out.recovered_s is None and out.failed == 0 and out.longest_gap_s == 1.0
