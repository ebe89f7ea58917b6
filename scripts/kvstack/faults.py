"""Fault drills on a running stack, under load, with the counters that say what happened.

- :func:`kv_outage`: the KV server stopped while a serving node takes multi-round load, then
  started again; LMCache's valkey client reconnects by itself; load once more.
- :func:`lmcache_kill`: LMCache's server killed (SIGKILL) under load; systemd restarts it (and
  vLLM, which is ``PartOf`` it); failed requests and seconds until a request succeeds again.
- :func:`kv_restart`: the KV server restarted or SIGKILLed under load through the router, until
  every serving node's LMCache reconnected to it (nothing on the serving nodes restarts).
- :func:`router_failover`: a serving node stopped under load sent through the router; the
  switch-over window, failed requests inside and after it, and seconds until it rejoins.
- :func:`across`: any action (a restart, a kill) under load sent through what users call (the
  router, Dynamo's frontend); failed requests, the longest wait between completions, recovery.
- :func:`shard_down`: one member of a sharded KV tier stopped: prefixes computed on one serving
  node read on another (the tier's hits) with every shard up and with one down, under load
  through the router (failed requests), then the shard started again.

Each load phase is a small multi-round QA run with its own text (round 2 of each user reuses its
round 1 from LMCache once vLLM's cache let it go) and reports requests, failures, prompt tokens
LMCache supplied, LMCache's L1/L2 hits and its L2 stores submitted and completed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from kvstack import metrics as m
from kvstack import stack
from kvstack.loadgen import LoadConfig, RunResult, run
from kvstack.log import progress
from kvstack.routing import ROUTER_COUNTER, healthy_backends
from kvstack.waits import wait_until
from kvstack.workloads import TokenizerAdapter, multi_round_qa

LMCACHE_COUNTERS = {
    "l1_hit_tokens": "lmcache_mp_lookup_hit_l1_tokens_total",
    "l2_hit_tokens": "lmcache_mp_lookup_hit_l2_tokens_total",
    "l2_chunks_submitted": "lmcache_mp_l2_store_submitted_objects_chunks_total",
    "l2_chunks_stored": "lmcache_mp_l2_store_completed_objects_chunks_total",
}


#: What LMCache logs when a vLLM instance registers with it (CPU engine-driven, GPU).
REGISTERED = "Registered (non-GPU context for instance|KV cache for GPU ID)"


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

    def invocation(self) -> str:
        """The id of LMCache's current (or coming) run on the node."""
        return self.ssh(self.node, "systemctl show -p InvocationID --value lmcache")

    def wait_registered(self, previous: str | None = None, timeout_s: float = 180) -> float:
        """Seconds until LMCache runs (a run other than *previous*) and every vLLM instance of the
        node registered its KV caches with it (its journal; vLLM does so as its engine starts)."""
        t0 = time.monotonic()
        want = len(self.ep.serving[self.node]["vllm"])
        show = "systemctl show -p ActiveState -p InvocationID -p ActiveEnterTimestamp lmcache"
        while True:
            props = dict(ln.split("=", 1) for ln in self.ssh(self.node, show).splitlines() if "=" in ln)
            if props.get("ActiveState") == "active" and props.get("InvocationID") != previous:
                since = props["ActiveEnterTimestamp"]
                grep = f"journalctl -u lmcache --since '{since}' -o cat | grep -c -E '{REGISTERED}' || true"
                if int(self.ssh(self.node, grep) or 0) >= want:
                    return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"{self.node}: vLLM not registered with LMCache after {timeout_s:.0f} s")
            time.sleep(2)

    def wait_serving(self, previous: str | None = None, timeout_s: float = 600) -> float:
        """Seconds until vLLM answers /health and a completion again, registered with an LMCache
        run other than *previous*."""
        t0 = time.monotonic()
        stack.wait_healthy(self.vllm, timeout_s)
        self.wait_registered(previous, timeout_s)
        cfg = LoadConfig(self.vllm["url"], self.vllm["model"], api_key=self.vllm.get("api_key") or None)
        while time.monotonic() - t0 < timeout_s:
            if all(r.ok for r in run(self.workload(99_999, users=1)[:1], cfg).records):
                return time.monotonic() - t0
            time.sleep(1)
        raise TimeoutError(f"{self.vllm['url']} did not serve within {timeout_s:.0f} s")


def kv_outage(
    drill: Drill, kv_node: str, reconnect_timeout_s: float = 120, settle_s: float = 10
) -> dict[str, Any]:
    """Before / KV server stopped / after it started again, each under load on one node.

    LMCache's valkey client reconnects by itself: nothing on the node restarts. Reports seconds
    from the KV server's start until the KV server lists LMCache's connections from the node
    again, and whether LMCache ran on through it (its systemd invocation unchanged).
    """
    service = drill.ep.nodes[kv_node].get("kv_service") or "redis-server"
    first = drill.invocation()
    phases = [drill.phase("before", 1)]
    progress(f"stopping {service} on {kv_node}")
    drill.ssh(kv_node, f"systemctl stop {service}")
    try:
        phases.append(drill.phase("KV server down", 2))
    finally:
        progress(f"starting {service} on {kv_node}")
        drill.ssh(kv_node, f"systemctl start {service}")
    back = time.monotonic()
    progress(f"waiting for LMCache on {drill.node} to reconnect to the KV server")
    reconnected_s = wait_kv_clients(drill.ep, drill.node, reconnect_timeout_s) - back
    # A redis that has just loaded its data answered slowly for a few seconds on the lab (stores
    # timed out at lmcache_kv_request_timeout_s): measure the tier once it has settled.
    time.sleep(settle_s)
    phases.append(drill.phase("after the KV server is back", 4))
    return {
        "service": service,
        "phases": [asdict(p) for p in phases],
        "reconnected_s": round(reconnected_s, 1),
        "lmcache_ran_on": drill.invocation() == first,
    }


def lmcache_kill(drill: Drill) -> dict[str, Any]:
    """SIGKILL LMCache's server 3 s into a load phase; failed requests and seconds to serve again."""
    killed: dict[str, float] = {}

    previous = drill.invocation()

    def kill() -> None:
        time.sleep(3)
        killed["at"] = time.monotonic()
        drill.ssh(drill.node, "systemctl kill -s KILL lmcache")

    t = threading.Thread(target=kill)
    t.start()
    ph = drill.phase("LMCache killed", 5, concurrency=4)
    t.join()
    drill.wait_serving(previous)
    back_s = time.monotonic() - killed["at"]
    after = drill.phase("after systemd restarted it", 6)
    restarts = drill.ssh(drill.node, "systemctl show -p NRestarts --value lmcache")
    return {
        "phases": [asdict(ph), asdict(after)],
        "serving_again_s": round(back_s, 1),
        "lmcache_restarts": int(restarts or 0),
    }


@contextlib.contextmanager
def _sampled(metrics_url: str, counter: str, every_s: float = 0.5) -> Iterator[list[tuple[float, float]]]:
    """``(time.perf_counter(), value)`` of one router counter, polled in a thread while the block runs."""
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            snap = m.scrape(metrics_url, (ROUTER_COUNTER,))
            samples.append((time.perf_counter(), snap.values.get(counter, 0.0)))
            done.wait(every_s)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        yield samples
    finally:
        done.set()
        poller.join()


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

    def stopper() -> None:
        progress(f"stopping the serving node behind {victim_url}")
        stop()

    with _sampled(metrics_url, counter) as samples:
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
    wait_until(
        lambda: victim_url in healthy_backends(metrics_url),
        rejoin_timeout_s,
        1,
        lambda: f"{victim_url} not healthy in the router {rejoin_timeout_s:.0f} s after its start",
    )
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
    settle_s: float | None = None,
) -> tuple[RunResult, float, float]:
    """Closed-loop load through *url* for *duration_s* with *action* run in a thread
    *action_at_s* into it (with *settle_s*, the load stops that long after the action ended,
    if sooner); the run and the action's start and end (``time.perf_counter``, the clock of the
    requests' records)."""
    timing: dict[str, float] = {}
    stop = threading.Event()

    def act() -> None:
        time.sleep(action_at_s)
        timing["start"] = time.perf_counter()
        try:
            action()
        finally:
            timing["end"] = time.perf_counter()
            if settle_s is not None:
                time.sleep(settle_s)
                stop.set()

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
        stop=stop,
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


class UnitWatch:
    """Each node's units polled once a second for a while (one SSH session per node, in a thread):
    which seconds a node had one of them not active."""

    def __init__(self, ep: stack.Endpoints, units: dict[str, list[str]], seconds: float):
        self.ep, self.units, self.seconds = ep, units, seconds
        self.samples: dict[str, list[tuple[int, list[bool]]]] = {n: [] for n in units}
        self.threads = [threading.Thread(target=self._poll, args=(n,)) for n in units]
        self.flag = f"/run/kvstack-unitwatch.{os.getpid()}.{id(self)}"  # join() ends the polls

    def _poll(self, node: str) -> None:
        names = " ".join(self.units[node])
        loop = (
            f"while [ ! -e {self.flag} ]; do "
            f'echo "$(date +%s) $(systemctl is-active {names} | tr "\\n" " ")"; sleep 1; done'
        )
        out = stack.run_on(self.ep, node, f"timeout {self.seconds:.0f} sh -c '{loop}'", warn=True)
        for line in out.stdout.splitlines():
            t, *states = line.split()
            if len(states) == len(self.units[node]):
                self.samples[node].append((int(t), [st == "active" for st in states]))

    def start(self) -> UnitWatch:
        for t in self.threads:
            t.start()
        return self

    def join(self) -> dict[str, Any]:
        """Seconds each unit of each node was not active, and the most nodes with a unit down in
        the same second; ends the polls first."""
        for n in self.units:
            stack.run_on(self.ep, n, f"touch {self.flag}", warn=True)
        for t in self.threads:
            t.join()
        for n in self.units:
            stack.run_on(self.ep, n, f"rm -f {self.flag}", warn=True)
        down_s = {
            n: {u: sum(not up[i] for _, up in s) for i, u in enumerate(self.units[n])}
            for n, s in self.samples.items()
        }
        down = [{t for t, up in s if not all(up)} for s in self.samples.values()]
        at_once = max((sum(t in d for d in down) for t in set().union(*down)), default=0)
        return {
            "down_s": down_s,
            "nodes_down_at_once": at_once,
            "samples": sum(map(len, self.samples.values())),
        }


def kv_restart(
    ep: stack.Endpoints, tok: TokenizerAdapter, kv_node: str, *, kill: bool = False, duration_s: float = 300.0
) -> dict[str, Any]:
    """The KV server restarted (or SIGKILLed: systemd starts it again) under load sent through the
    router, until every serving node's LMCache holds connections to the KV server again, then
    20 s more: what clients saw, which units went down on which node and how many nodes at once,
    and when each node reconnected."""
    service = ep.nodes[kv_node].get("kv_service") or "redis-server"
    router = next(iter(ep.router.values()))
    units = {n: ["lmcache", *(f"vllm@{v['instance']}" for v in s["vllm"])] for n, s in ep.serving.items()}
    vllm = ep.vllm(next(iter(ep.serving)))
    how = f"kill -s KILL {service}" if kill else f"restart {service}"
    back: dict[str, float] = {}
    errors: list[BaseException] = []

    def action() -> None:
        try:
            stack.run_on(ep, kv_node, f"systemctl {how}")
            progress("waiting for every serving node's LMCache to reach the KV server again")
            for n in ep.serving:
                wait_kv_clients(ep, n, timeout_s=duration_s)
                back[n] = time.perf_counter()
        except BaseException as e:  # raised again below, in the caller's thread
            errors.append(e)

    watch = UnitWatch(ep, units, duration_s + 40).start()
    res, start, end = under_action(
        router["url"],
        vllm["model"],
        drill_conversations(tok, 256, 0),
        action,
        api_key=vllm.get("api_key") or None,
        duration_s=duration_s,
        action_at_s=10.0,
        concurrency=2,
        settle_s=20.0,
    )
    if errors:
        raise errors[0]
    return {
        "service": service,
        "action": how,
        # False: the load ended (time, or every conversation over) before every node was back
        "load_outlasted_recovery": end <= max(r.start for r in res.records),
        "stopped_by": res.stopped_by,
        "conversations_aborted": res.conversations_aborted,
        "clients": summarize_across(res.records, start, end).to_dict(),
        "units": watch.join(),
        "kv_clients_again_s": {n: round(t - start, 1) for n, t in back.items()},
    }


def wait_kv_clients(ep: stack.Endpoints, node: str, timeout_s: float) -> float:
    """Wait until the KV server lists *node*'s LMCache connections (the valkey client: one per
    worker, each reconnecting on its own; resp: any); monotonic time."""
    lm = ep.lmcache(node)
    addr = ep.nodes[node].get("cluster_address") or ep.nodes[node]["ssh_host"]
    want = int(lm.get("kv_workers") or 1) if lm.get("kv_client", "valkey") == "valkey" else 1

    def connected() -> float:
        clients = stack.kv_clients(lm)
        return time.monotonic() if sum(c.rsplit(":", 1)[0] == addr for c in clients) >= want else 0.0

    return wait_until(
        connected,
        timeout_s,
        1,
        lambda: f"{node}: fewer than {want} connections to the KV server after {timeout_s:.0f} s",
    )


def cross_node_hits(
    ep: stack.Endpoints, tok: TokenizerAdapter, seed: int, prompts: int = 12
) -> dict[str, Any]:
    """Fresh long prompts computed on the first serving node, then sent to the second one, which
    has never seen them: the prompt tokens its LMCache found in the KV tier (L2) and how many of
    the prompts' full chunks that is."""
    a, b = list(ep.serving)[:2]
    convs = multi_round_qa(
        tok,
        users=prompts,
        rounds=1,
        system_tokens=0,
        history_tokens=2048,
        question_tokens=32,
        answer_tokens=1,
        seed=seed,
    ).conversations
    src_a, src_b = stack.lmcache_source(ep, a), stack.lmcache_source(ep, b)

    def send(node: str) -> RunResult:
        v = ep.vllm(node)
        return run(
            convs,
            LoadConfig(
                v["url"], v["model"], concurrency=2, request_timeout_s=120, api_key=v.get("api_key") or None
            ),
        )

    before_a = m.snapshot_all([src_a])
    cold = send(a)

    seen: list[float] = []

    def stored() -> bool:  # every L2 store completed, or (a shard away) no more completing for 3 s
        d, _ = m.deltas_between(before_a, m.snapshot_all([src_a]))
        lm = d.get(src_a.name, {})
        seen.append(m.total(lm, LMCACHE_COUNTERS["l2_chunks_stored"]))
        submitted = m.total(lm, LMCACHE_COUNTERS["l2_chunks_submitted"])
        return submitted > 0 and (seen[-1] >= submitted or seen[-4:].count(seen[-1]) == 4)

    wait_until(stored, 90, 1, lambda: f"{a}: LMCache's L2 stores still going after 90 s")
    before_b = m.snapshot_all([src_b])
    hit = send(b)
    d, _ = m.deltas_between(before_b, m.snapshot_all([src_b]))
    chunk = int(ep.lmcache(b)["chunk_size"])
    full = sum((r.prompt_tokens // chunk) * chunk for r in cold.records if r.ok)
    l2 = m.total(d.get(src_b.name, {}), LMCACHE_COUNTERS["l2_hit_tokens"])
    out = {
        "prompts": len(convs),
        "failed": sum(not r.ok for r in cold.records + hit.records),
        "full_chunk_tokens": full,
        "l2_hit_tokens": l2,
        "hit_fraction": round(l2 / full, 3) if full else 0.0,
    }
    progress(f"cross-node: {l2:.0f} of {full} full-chunk prompt tokens found in the KV tier")
    return out


def shard_down(
    ep: stack.Endpoints, tok: TokenizerAdapter, shard: str, load_s: float = 90.0
) -> dict[str, Any]:
    """One KV shard stopped, then started again: the cross-node hits (:func:`cross_node_hits`)
    with every shard up and with *shard* down, measured while load runs through the router (its
    failed requests are the users' view); after the start, the hits once more."""
    service = ep.nodes[shard].get("kv_service") or "redis-server"
    router = next(iter(ep.router.values()))
    vllm = ep.vllm(next(iter(ep.serving)))
    up = cross_node_hits(ep, tok, seed=101)
    result: dict[str, Any] = {}

    def down_phase() -> None:
        progress(f"stopping {service} on {shard}")
        stack.run_on(ep, shard, f"systemctl stop {service}")
        try:
            result["down"] = cross_node_hits(ep, tok, seed=202)
        finally:
            progress(f"starting {service} on {shard}")
            stack.run_on(ep, shard, f"systemctl start {service}")

    res, start, end = under_action(
        router["url"],
        vllm["model"],
        drill_conversations(tok, 64, 7),
        down_phase,
        api_key=vllm.get("api_key") or None,
        duration_s=load_s + 120,
        action_at_s=5.0,
        concurrency=2,
        settle_s=10.0,
    )
    shards = len(ep.kv)
    return {
        "shard": shard,
        "shards": shards,
        "up": up,
        "down": result["down"],
        "router": summarize_across(res.records, start, end).to_dict(),
        # a prompt's hits are its longest prefix of chunks all found: with one of N shards gone,
        # each chunk is there with probability (N-1)/N, so a k-chunk prefix keeps on average
        # sum_{j=1..k} ((N-1)/N)^j / k of its chunks (k=8 of 256 tokens, N=3: 0.24)
        "expected_down_fraction_of_up": round(_prefix_survival(shards, 8), 3),
        "back": cross_node_hits(ep, tok, seed=303),
    }


def _prefix_survival(shards: int, chunks: int) -> float:
    """Mean share of a *chunks*-chunk prefix still found with one of *shards* shards down."""
    p = (shards - 1) / shards
    return sum(p**j for j in range(1, chunks + 1)) / chunks
