"""The TTFT probe (profile ``kv``): a 4k-token context cold, as vLLM's own prefix-cache hit, and
served from the KV-server tier after vLLM's cache was emptied."""

from __future__ import annotations

import time
from typing import Any

from kvstack import loadgen, stack
from kvstack import metrics as m
from kvstack.bench.context import Cell, Context
from kvstack.bench.options import BenchOptions
from kvstack.log import progress
from kvstack.results_schema import TtftProbe
from kvstack.stats import percentile
from kvstack.workloads import TokenizerAdapter, long_doc_qa

PROBE_TOKENS = 4096
PHASES = ("cold", "vLLM prefix-cache hit", "KV-server tier hit")


def _tokens_by_source(deltas: dict[str, dict[str, float]], lmcache: m.Source | None) -> dict[str, float]:
    vd = deltas.get("vllm", {})
    ld = deltas.get(lmcache.name, {}) if lmcache else {}
    tokens = {
        src: m.total(vd, "vllm:prompt_tokens_by_source_total", source=src)
        for src in ("local_cache_hit", "external_kv_transfer")
    }
    tokens["LMCache L1 hit"] = m.total(ld, "lmcache_mp_lookup_hit_l1_tokens_total")
    tokens["LMCache L2 hit"] = m.total(ld, "lmcache_mp_lookup_hit_l2_tokens_total")
    return tokens


#: a phase's tokens from the source it claims must be at least this share of its prompt tokens,
#: and from a source it must not use at most the other share
CLAIMED_SHARE, STRAY_SHARE = 0.5, 0.1


def phase_problems(probe: TtftProbe) -> list[str]:
    """Where a probe phase's prompt tokens did not come from where the phase claims (vLLM's and
    LMCache's counters): cold from neither cache, the prefix-cache hit from vLLM's own cache, the
    KV-server hit from LMCache's L2 (the KV server), not from vLLM or LMCache's L1. Empty when
    every phase is what it says."""
    total = probe.get("n", 0) * probe.get("prompt_tokens", 0)
    src = probe.get("tokens_by_source") or {}
    checks = (
        ("cold", "local_cache_hit", "<="),
        ("cold", "external_kv_transfer", "<="),
        ("vLLM prefix-cache hit", "local_cache_hit", ">="),
        ("KV-server tier hit", "local_cache_hit", "<="),
        ("KV-server tier hit", "external_kv_transfer", ">="),
        ("KV-server tier hit", "LMCache L2 hit", ">="),
        ("KV-server tier hit", "LMCache L1 hit", "<="),
    )
    out = []
    for phase, source, op in checks:
        got = (src.get(phase) or {}).get(source, 0.0)
        line = (CLAIMED_SHARE if op == ">=" else STRAY_SHARE) * total
        if (got < line) if op == ">=" else (got > line):
            out.append(f"{phase}: {got:,.0f} tokens from {source} (expected {op} {line:,.0f})")
    return out


def ttft_probe(
    vllm: dict[str, Any], lmcache: m.Source | None, tok: TokenizerAdapter, n: int, seed: int
) -> TtftProbe:
    """TTFT of a 4k-token context: cold, as vLLM's own prefix-cache hit, and from the KV-server tier
    (vLLM's cache emptied in between). vLLM's and LMCache's counters per phase say where the tokens
    came from (a KV-server hit must show LMCache L2 hit tokens, not L1)."""
    docs = long_doc_qa(
        tok, documents=n, doc_tokens=PROBE_TOKENS, repeats=1, question_tokens=0, answer_tokens=1, seed=seed
    )
    cfg = loadgen.LoadConfig(vllm["url"], vllm["model"], api_key=vllm.get("api_key") or None)
    rows: dict[str, list[float]] = {k: [] for k in PHASES}
    counters: dict[str, dict[str, float]] = {k: {} for k in PHASES}
    failed = 0
    sources = [stack.vllm_source(vllm, "vllm")] + ([lmcache] if lmcache else [])
    for i, conv in enumerate(docs.conversations):
        for kind in PHASES:
            if kind == "KV-server tier hit":
                time.sleep(1.0)  # LMCache stores asynchronously: let the store land first
                if not stack.reset_prefix_cache(vllm):
                    raise RuntimeError(
                        "POST /reset_prefix_cache failed: the probe needs VLLM_SERVER_DEV_MODE=1"
                    )
            before = m.snapshot_all(sources)
            rec = loadgen.run([conv], cfg).records[0]
            deltas, _ = m.deltas_between(before, m.snapshot_all(sources))
            for k, v in _tokens_by_source(deltas, lmcache).items():
                counters[kind][k] = counters[kind].get(k, 0.0) + v
            if rec.ok and rec.ttft is not None:
                rows[kind].append(rec.ttft)
            else:
                failed += 1
        progress(f"TTFT probe: {i + 1}/{n} contexts")
    return {
        "prompt_tokens": PROBE_TOKENS,
        "n": n,
        "failed": failed,
        "ttft_s": rows,
        "ttft_p50_s": {k: percentile(v, 50) for k, v in rows.items()},
        "tokens_by_source": counters,
    }


def probe_here(ctx: Context, label: str) -> None:
    """The probe on the node as it is now, recorded under *label* (the first one also as
    ``ttft_probe``, what the targets read)."""
    probe = ttft_probe(
        ctx.vllm,
        stack.lmcache_source(ctx.ep, ctx.node),
        ctx.tok,
        ctx.o.preset("probe_n"),
        ctx.seed("probe", label),
    )
    ctx.res.data["ttft_probes"][label] = probe
    ctx.res.put("ttft_probe", ctx.res.data["ttft_probe"] or probe)


class ProbeStep:
    """The probe on its own, profile ``kv``, when the matrix had no ``kv`` cell to probe in."""

    name = "TTFT probe"
    optional = True

    def enabled(self, o: BenchOptions) -> bool:
        return o.probe

    def planned(self, ctx: Context) -> dict[str, Any]:
        return {"probe": ctx.o.probe}

    def run(self, ctx: Context) -> None:
        if ctx.res.data["ttft_probe"] is not None:
            return  # measured in the matrix's kv cell
        ctx.ready(Cell("kv"), "probe")
        probe_here(ctx, "kv")
