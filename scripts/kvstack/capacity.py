"""The KV tier's capacity drill: write several times the KV server's budget through the router.

With the KV server in Kvrocks' mode of operation (it refuses writes at its hard limit instead of
evicting: Kvrocks itself, or redis with ``noeviction``) and the KV-tier budget set, :func:`run`

1. samples the server's used bytes (what :mod:`kvstack_node.kv_janitor` counts: redis ``used_memory``,
   Kvrocks ``used_db_size``) four times a second for the whole drill: the peak;
2. sends unique long prompts through the router (phase 1), restarts LMCache on one serving node
   (its client-side accounting starts from zero while its keys stay on the server), sends as many
   again (phase 2): failed requests, bytes the KV server received;
3. re-sends the latest prompts straight to every serving node, vLLM's own prefix cache emptied
   first: hits from the KV tier (LMCache's L2 counter), and greedy outputs equal to the cold ones;
4. reads what the janitor deleted meanwhile (its journal on the KV node).

The caller asserts on the figures (tests/lab/test_kv_capacity.py); the README lists them.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kvstack import faults, stack
from kvstack import metrics as m
from kvstack.log import progress
from kvstack.workloads import TokenizerAdapter, multi_round_qa
from kvstack_node.kv_janitor import info, read_usage
from kvstack_node.resp import RespClient


class PeakSampler:
    """The KV server's used bytes, sampled in a thread until :meth:`stop`."""

    def __init__(self, lm: dict[str, Any], interval_s: float = 0.25):
        self.lm, self.interval_s = lm, interval_s
        self.peak, self.samples, self.limit = 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with kv_connect(self.lm) as c:
            while not self._stop.is_set():
                usage = read_usage(c)
                self.peak, self.limit = max(self.peak, usage.used), usage.limit
                self.samples += 1
                self._stop.wait(self.interval_s)

    def start(self) -> PeakSampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, int]:
        """Peak used bytes, the server's hard limit, and how many samples."""
        self._stop.set()
        self._thread.join()
        return {"peak_used_bytes": self.peak, "hard_limit_bytes": self.limit, "samples": self.samples}


def kv_connect(lm: dict[str, Any]) -> RespClient:
    """A RESP connection to the KV server *lm* (a node's LMCache endpoints) uses."""
    return RespClient(lm["kv_host"], int(lm["kv_port"]), lm.get("kv_password") or None)


def received_bytes(lm: dict[str, Any]) -> int:
    """Bytes the KV server has received since it started (``total_net_input_bytes``)."""
    with kv_connect(lm) as c:
        return int(info(c, "stats").get("total_net_input_bytes", 0))


def prompts(tok: TokenizerAdapter, n: int, seed: int) -> list[str]:
    """*n* unique prompts of about 2.3k tokens (a 256-token system prompt they share, then their own)."""
    wl = multi_round_qa(
        tok,
        users=n,
        rounds=1,
        system_tokens=256,
        history_tokens=2048,
        question_tokens=32,
        answer_tokens=8,
        seed=seed,
    )
    return [c.prompt(0) for c in wl.conversations]


def send(url: str, vllm: dict[str, Any], batch: list[str], concurrency: int = 2) -> list[str | None]:
    """Greedy completions of *batch* through *url*: each text, or None for a failed request."""

    def one(p: str) -> str | None:
        try:
            return stack.complete(url, vllm["model"], p, api_key=vllm.get("api_key") or None)
        except OSError as e:
            progress(f"request failed: {type(e).__name__}: {e}")
            return None

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, batch))


def janitor_deleted(ep: stack.Endpoints, kv_node: str, since: str) -> int:
    """Keys the janitor deleted since *since* (its JSON lines in the journal)."""
    cmd = f"journalctl -u kvstack-kv-janitor --since '{since}' -o cat | grep '^{{' || true"
    lines = stack.run_on(ep, kv_node, cmd).stdout.splitlines()
    return sum(int(json.loads(ln).get("deleted_keys", 0)) for ln in lines if ln.startswith("{"))


def resend_hits(ep: stack.Endpoints, batch: list[str], cold: list[str | None]) -> dict[str, Any]:
    """*batch* again on every serving node, its vLLM prefix cache emptied: L2 hit tokens and
    how many outputs differ from the cold ones."""
    out: dict[str, Any] = {"l2_hit_tokens": {}, "l1_hit_tokens": {}, "differ": 0, "failed": 0}
    for node in ep.serving:
        vllm = ep.vllm(node)
        src = stack.lmcache_source(ep, node)
        if not stack.reset_prefix_cache(vllm):
            raise stack.StackError(f"{node}: POST /reset_prefix_cache refused (lab dev mode off?)")
        before = m.snapshot_all([src])
        again = send(vllm["url"], vllm, batch, concurrency=1)
        deltas, _ = m.deltas_between(before, m.snapshot_all([src]))
        lm = deltas.get(src.name, {})
        out["l2_hit_tokens"][node] = m.total(lm, faults.LMCACHE_COUNTERS["l2_hit_tokens"])
        out["l1_hit_tokens"][node] = m.total(lm, faults.LMCACHE_COUNTERS["l1_hit_tokens"])
        out["failed"] += sum(a is None for a in again)
        out["differ"] += sum(a is not None and a != c for a, c in zip(again, cold, strict=True))
    return out


def run(
    ep: stack.Endpoints,
    tok: TokenizerAdapter,
    kv_node: str,
    *,
    per_phase: int = 56,
    resend: int = 6,
    seed: int = 0,
) -> dict[str, Any]:
    """The drill (module docstring); its figures."""
    router = next(iter(ep.router.values()))
    restart_node = next(iter(ep.serving))
    lm = ep.lmcache(restart_node)
    vllm = ep.vllm(restart_node)
    since = stack.run_on(ep, kv_node, "date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    batches = [prompts(tok, per_phase, seed), prompts(tok, per_phase, seed + 1)]
    received0, t0 = received_bytes(lm), time.monotonic()
    sampler = PeakSampler(lm).start()
    try:
        cold = send(router["url"], vllm, batches[0])
        progress(f"phase 1: {per_phase} prompts through the router; restarting LMCache on {restart_node}")
        drill = faults.Drill(ep, restart_node, tok)
        previous = drill.invocation()
        stack.run_on(ep, restart_node, "systemctl restart lmcache")
        drill.wait_serving(previous)
        cold += send(router["url"], vllm, batches[1])
        progress(f"phase 2: {per_phase} prompts; re-sending the latest {resend} to every serving node")
        hits = resend_hits(ep, batches[1][-resend:], cold[-resend:])
    finally:
        peak = sampler.stop()
    return {
        "requests": len(cold),
        "failed": sum(c is None for c in cold),
        "received_bytes": received_bytes(lm) - received0,
        **peak,
        "janitor_deleted_keys": janitor_deleted(ep, kv_node, since),
        "resend": hits,
        "wall_s": round(time.monotonic() - t0, 1),
    }
