"""The bench's workloads: the measured one, sized against vLLM's KV space, and the warm-up."""

from __future__ import annotations

from typing import Any

from kvstack import loadgen
from kvstack.bench.options import BenchOptions
from kvstack.workloads import TokenizerAdapter, Workload, long_doc_qa, multi_round_qa, shared_prefix


def build_workload(
    o: BenchOptions, tok: TokenizerAdapter, kv_tokens: int, seed: int, ratio: float | None = None
) -> Workload:
    """The workload of one run (its own *seed*), sized against vLLM's KV space (*ratio* times it,
    default ``--kv-ratio``)."""
    ratio, a = ratio or o.preset("kv_ratio"), o.preset("answer_tokens")
    s, q, r = o.preset("system_tokens"), o.preset("question_tokens"), o.preset("rounds")
    h = o.preset("history_tokens")
    if o.workload == "multi-round-qa":
        per_user = h + r * q + (r - 1) * a
        users = o.users or max(1, -(-int(ratio * kv_tokens - s) // per_user))
        return multi_round_qa(
            tok,
            users=users,
            rounds=r,
            system_tokens=s,
            history_tokens=h,
            question_tokens=q,
            answer_tokens=a,
            seed=seed,
        )
    doc = max(s, 256) * 4
    if o.workload == "long-doc-qa":
        docs = o.users or max(1, -(-int(ratio * kv_tokens) // doc))
        return long_doc_qa(
            tok, documents=docs, doc_tokens=doc, repeats=r, question_tokens=q, answer_tokens=a, seed=seed
        )
    n = o.users or max(1, -(-int(ratio * kv_tokens) // (doc + r * q)))
    return shared_prefix(
        tok, prefixes=n, suffixes=r, prefix_tokens=doc, suffix_tokens=q, answer_tokens=a, seed=seed
    )


def warm_up(vllm: dict[str, Any], tok: TokenizerAdapter, n: int, seed: int) -> None:
    """*n* short requests that share nothing with the workload; not measured."""
    if n <= 0:
        return
    w = shared_prefix(
        tok, prefixes=n, suffixes=1, prefix_tokens=300, suffix_tokens=8, answer_tokens=8, seed=seed
    )
    cfg = loadgen.LoadConfig(vllm["url"], vllm["model"], api_key=vllm.get("api_key") or None)
    bad = [r.error for r in loadgen.run(w.conversations, cfg).records if not r.ok]
    if bad:
        raise RuntimeError(f"warm-up failed on {vllm['url']}: {bad[0]}")
