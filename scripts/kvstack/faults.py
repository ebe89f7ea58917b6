"""Fault drills on a running stack, under load, with the counters that say what happened.

- :func:`kv_outage`: the KV server stopped while a serving node takes multi-round load, then
  started again; LMCache's watchdog (roles/lmcache) restarts LMCache; load once more.
- :func:`lmcache_kill`: LMCache's server killed (SIGKILL) under load; systemd restarts it (and
  vLLM, which is ``PartOf`` it); failed requests and seconds until a request succeeds again.
- :func:`router_failover`: a serving node stopped under load sent through the router; the
  switch-over window, failed requests inside and after it, and seconds until it rejoins.
- :func:`across`: any action (a restart, a kill) under load sent through what users call (the
  router, Dynamo's frontend); failed requests, the longest wait between completions, recovery.

Each load phase is a small multi-round QA run with its own text (round 2 of each user reuses its
round 1 from LMCache once vLLM's cache let it go) and reports requests, failures, prompt tokens
LMCache supplied, LMCache's L1/L2 hits and its L2 stores submitted and completed.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from kvstack import metrics as m
from kvstack import stack
from kvstack.loadgen import LoadConfig, RunResult, run
from kvstack.log import progress
from kvstack.routing import ROUTER_COUNTER, healthy_backends
from kvstack.workloads import TokenizerAdapter, multi_round_qa

LMCACHE_COUNTERS = {
    "l1_hit_tokens": "lmcache_mp_lookup_hit_l1_tokens_total",
    "l2_hit_tokens": "lmcache_mp_lookup_hit_l2_tokens_total",
    "l2_chunks_submitted": "lmcache_mp_l2_store_submitted_objects_chunks_total",
    "l2_chunks_stored": "lmcache_mp_l2_store_completed_objects_chunks_total",
}


@dataclass
class Phase:
    """One load phase: what the clients saw and what the counters say."""

    name: str
    requests: int = 0
    failed: int = 0
    lmcache_tokens: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0


class Drill:
    """A serving node under test, its tokenizer and counter sources."""

    def __init__(self, ep: stack.Endpoints, node: str, tok: TokenizerAdapter, seed: int | None = None):
        self.ep, self.node, self.tok = ep, node, tok
        self.vllm = ep.vllm(node)
        self.vsrc = stack.vllm_source(self.vllm, "vllm")
        self.lsrc = stack.lmcache_source(ep, node)
        self.seed = random.SystemRandom().randrange(1 << 40) if seed is None else seed

    def workload(self, tag: int, users: int = 8) -> list:
        """Fresh multi-round text: users whose 2.6k-token prompts outgrow vLLM's cache between rounds."""
        w = multi_round_qa(
            self.tok,
            users=users,
            rounds=2,
            system_tokens=512,
            history_tokens=2048,
            question_tokens=32,
            answer_tokens=4,
            seed=self.seed + tag,
        )
        return w.conversations

    def phase(self, name: str, tag: int, concurrency: int = 4) -> Phase:
        """Run one load phase and read the counters around it."""
        before = m.snapshot_all([self.vsrc, self.lsrc])
        t0 = time.monotonic()
        cfg = LoadConfig(
            self.vllm["url"],
            self.vllm["model"],
            concurrency=concurrency,
            interleave=True,
            request_timeout_s=120,
            api_key=self.vllm.get("api_key") or None,
        )
        res = run(self.workload(tag), cfg)
        deltas, _ = m.deltas_between(before, m.snapshot_all([self.vsrc, self.lsrc]))
        ph = Phase(name, len(res.records), sum(not r.ok for r in res.records), wall_s=time.monotonic() - t0)
        ph.errors = sorted({r.error or "" for r in res.records if not r.ok})[:3]
        ph.lmcache_tokens = m.total(
            deltas.get("vllm", {}), "vllm:prompt_tokens_by_source_total", source="external_kv_transfer"
        )
        lm = deltas.get(self.lsrc.name, {})
        ph.counters = {k: m.total(lm, name) for k, name in LMCACHE_COUNTERS.items()}
        stored, submitted = ph.counters["l2_chunks_stored"], ph.counters["l2_chunks_submitted"]
        progress(
            f"{name}: {ph.requests} requests, {ph.failed} failed, {ph.lmcache_tokens:.0f} prompt tokens "
            f"from LMCache, L2 stores {stored:.0f}/{submitted:.0f}"
        )
        return ph

    def ssh(self, node: str, cmd: str) -> str:
        """Run *cmd* on *node*; returns stdout."""
        return stack.run_on(self.ep, node, cmd).stdout.strip()

    def wait_serving(self, timeout_s: float = 600) -> float:
        """Seconds until vLLM answers /health and a completion again."""
        t0 = time.monotonic()
        stack.wait_healthy(self.vllm, timeout_s)
        cfg = LoadConfig(self.vllm["url"], self.vllm["model"], api_key=self.vllm.get("api_key") or None)
        while time.monotonic() - t0 < timeout_s:
            if all(r.ok for r in run(self.workload(99_999, users=1)[:1], cfg).records):
                return time.monotonic() - t0
            time.sleep(1)
        raise TimeoutError(f"{self.vllm['url']} did not serve within {timeout_s:.0f} s")


def kv_outage(drill: Drill, kv_node: str, watchdog_timeout_s: float = 300) -> dict[str, Any]:
    """Before / KV server stopped / after LMCache's watchdog restarted it, each under load.

    LMCache 0.5.6's RESP adapter does not reconnect once the KV server is back; the lmcache
    role's watchdog timer restarts LMCache (and vLLM with it) when the KV server holds no
    connection from the node. Reports seconds from the KV server's start to that restart and
    from the restart to serving again.
    """
    service = drill.ep.nodes[kv_node].get("kv_service") or "redis-server"
    invocation = "systemctl show -p InvocationID --value lmcache"
    phases = [drill.phase("before", 1)]
    progress(f"stopping {service} on {kv_node}")
    drill.ssh(kv_node, f"systemctl stop {service}")
    try:
        phases.append(drill.phase("KV server down", 2))
    finally:
        first = drill.ssh(drill.node, invocation)
        progress(f"starting {service} on {kv_node}")
        drill.ssh(kv_node, f"systemctl start {service}")
    back = time.monotonic()
    progress(f"waiting for the watchdog on {drill.node} to restart lmcache (vLLM restarts with it)")
    while drill.ssh(drill.node, invocation) == first:
        if time.monotonic() - back > watchdog_timeout_s:
            raise TimeoutError(f"lmcache on {drill.node} was not restarted within {watchdog_timeout_s:.0f} s")
        time.sleep(1)
    restarted_s = time.monotonic() - back
    serving_s = drill.wait_serving()
    phases.append(drill.phase("after the watchdog restarted LMCache", 4))
    return {
        "service": service,
        "phases": [asdict(p) for p in phases],
        "watchdog_restart_s": round(restarted_s, 1),
        "serving_again_s": round(serving_s, 1),
    }


def lmcache_kill(drill: Drill) -> dict[str, Any]:
    """SIGKILL LMCache's server 3 s into a load phase; failed requests and seconds to serve again."""
    killed: dict[str, float] = {}

    def kill() -> None:
        time.sleep(3)
        killed["at"] = time.monotonic()
        drill.ssh(drill.node, "systemctl kill -s KILL lmcache")

    t = threading.Thread(target=kill)
    t.start()
    ph = drill.phase("LMCache killed", 5, concurrency=4)
    t.join()
    drill.wait_serving()
    back_s = time.monotonic() - killed["at"]
    after = drill.phase("after systemd restarted it", 6)
    restarts = drill.ssh(drill.node, "systemctl show -p NRestarts --value lmcache")
    return {
        "phases": [asdict(ph), asdict(after)],
        "serving_again_s": round(back_s, 1),
        "lmcache_restarts": int(restarts or 0),
    }


def router_failover(
    router_url: str,
    metrics_url: str,
    victim_url: str,
    model: str,
    tok: TokenizerAdapter,
    stop: Callable[[], None],
    start: Callable[[], None],
    *,
    api_key: str | None = None,
    duration_s: float = 75.0,
    stop_at_s: float = 10.0,
    rejoin_timeout_s: float = 600.0,
    seed: int = 0,
) -> dict[str, Any]:
    """A serving node stopped under load sent through the router, then started again.

    The router's per-backend request counter is polled every 0.5 s: the switch-over window is the
    time from the stop until the victim's counter last moved (the router sent it nothing after).
    Reports failed requests inside and after that window, and seconds until the router counted the
    victim healthy again once it was started.
    """
    counter = f'{ROUTER_COUNTER}{{worker="{victim_url}"}}'
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            snap = m.scrape(metrics_url, (ROUTER_COUNTER,))
            samples.append((time.perf_counter(), snap.values.get(counter, 0.0)))
            done.wait(0.5)

    def stopper() -> None:
        progress(f"stopping the serving node behind {victim_url}")
        stop()

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        res, t_stop, _ = under_action(
            router_url,
            model,
            drill_conversations(tok, 64, seed),
            stopper,
            api_key=api_key,
            duration_s=duration_s,
            action_at_s=stop_at_s,
            concurrency=4,
        )
    finally:
        done.set()
        poller.join()
    final = samples[-1][1]
    last_move = next((t for t, v in samples if v >= final), t_stop)
    window = max(0.0, last_move - t_stop)
    failed = [r for r in res.records if not r.ok]
    after_window = [r for r in failed if r.start > t_stop + window]
    progress(
        f"switch-over window {window:.1f} s; failed requests {len(failed)} "
        f"({len(after_window)} after the window) of {len(res.records)}"
    )
    t_start = time.perf_counter()
    start()
    while True:
        if victim_url in healthy_backends(metrics_url):
            break
        if time.perf_counter() - t_start > rejoin_timeout_s:
            raise TimeoutError(
                f"{victim_url} not healthy in the router {rejoin_timeout_s:.0f} s after its start"
            )
        time.sleep(1)
    rejoin_s = time.perf_counter() - t_start
    progress(f"{victim_url} healthy in the router again {rejoin_s:.0f} s after it was started")
    return {
        "requests": len(res.records),
        "before_stop": sum(1 for r in res.records if r.start < t_stop),
        "failed": len(failed),
        "failed_in_window": len(failed) - len(after_window),
        "failed_after_window": len(after_window),
        "switch_over_s": round(window, 1),
        "victim_requests_after_window": int(
            final - next((v for t, v in samples if t >= t_stop + window), final)
        ),
        "errors": sorted({r.error or "" for r in failed})[:3],
        "rejoin_s": round(rejoin_s, 1),
    }


@dataclass
class Across:
    """What clients of one endpoint saw while an action ran (times in seconds)."""

    requests: int
    failed: int
    errors: list[str]
    longest_gap_s: float
    recovered_s: float | None
    action_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return asdict(self)


def across(
    url: str,
    model: str,
    tok: TokenizerAdapter,
    action: Callable[[], None],
    *,
    api_key: str | None = None,
    duration_s: float = 60.0,
    action_at_s: float = 10.0,
    concurrency: int = 2,
    seed: int = 0,
) -> Across:
    """Closed-loop load through *url* (what users call: the router, Dynamo's frontend) for
    *duration_s*, with *action* (a restart, a kill) run *action_at_s* into it.

    Reports failed requests, the longest time between two completions (the window users waited),
    and seconds from the action's start until the first request started after it completed.
    """
    res, start, end = under_action(
        url,
        model,
        drill_conversations(tok, 32, seed),
        action,
        api_key=api_key,
        duration_s=duration_s,
        action_at_s=action_at_s,
        concurrency=concurrency,
    )
    return summarize_across(res.records, start, end)


def drill_conversations(tok: TokenizerAdapter, users: int, seed: int) -> list:
    """Short multi-round conversations for load across a fault (8 rounds of small turns)."""
    wl = multi_round_qa(
        tok,
        users=users,
        rounds=8,
        system_tokens=128,
        history_tokens=256,
        question_tokens=32,
        answer_tokens=8,
        seed=seed,
    )
    return wl.conversations


def under_action(
    url: str,
    model: str,
    conversations: list,
    action: Callable[[], None],
    *,
    api_key: str | None,
    duration_s: float,
    action_at_s: float,
    concurrency: int,
) -> tuple[RunResult, float, float]:
    """Closed-loop load through *url* for *duration_s* with *action* run in a thread
    *action_at_s* into it; the run and the action's start and end (``time.perf_counter``, the
    clock of the requests' records)."""
    timing: dict[str, float] = {}

    def act() -> None:
        time.sleep(action_at_s)
        timing["start"] = time.perf_counter()
        try:
            action()
        finally:
            timing["end"] = time.perf_counter()

    t = threading.Thread(target=act)
    t.start()
    cfg = LoadConfig(
        url,
        model,
        concurrency=concurrency,
        interleave=True,
        request_timeout_s=120,
        max_seconds=duration_s,
        api_key=api_key,
    )
    try:
        res = run(conversations, cfg)
    finally:
        t.join()
    if "start" not in timing or timing["start"] > max((r.start for r in res.records), default=0.0):
        raise RuntimeError(f"the action ran after the load through {url} had ended: raise duration_s")
    return res, timing["start"], timing["end"]


def summarize_across(records: list, action_start: float, action_end: float) -> Across:
    """The figures of :class:`Across` from a run's records and the action's start and end."""
    ok = sorted(r.end for r in records if r.ok)
    failed = [r for r in records if not r.ok]
    gaps = [b - a for a, b in itertools.pairwise(ok)]
    after = [r for r in records if r.ok and r.start >= action_end]
    out = Across(
        requests=len(records),
        failed=len(failed),
        errors=sorted({r.error or "" for r in failed})[:3],
        longest_gap_s=round(max(gaps, default=0.0), 2),
        recovered_s=round(min(r.end for r in after) - action_start, 2) if after else None,
        action_s=round(action_end - action_start, 2),
    )
    progress(
        f"{out.failed} failed of {out.requests} requests; longest gap between completions "
        f"{out.longest_gap_s:.2f} s; first completion after the action +{out.recovered_s} s"
    )
    return out
