"""Capacity planning arithmetic (issue 20's `fab plan`, first step): what one token's KV cache
costs, what each tier holds, and which share of a workload's chunk lookups each tier can serve.

- :class:`ModelKV` reads a model's ``config.json`` (layers, KV heads, head dim, dtype; or a KV-cache
  dtype override such as vLLM's ``--kv-cache-dtype fp8``): bytes per token are K and V for every
  layer and KV head, ``2 x layers x kv_heads x head_dim x bytes per element``.
- :func:`stack_distances` gives each access of a chunk trace its LRU stack distance (how many
  distinct chunks were used since its previous use; None for a first use), in O(n log n) with a
  Fenwick tree over the accesses' positions.
- :func:`tier_hit_shares` turns distances into the share of lookups each tier of an LRU hierarchy
  would serve, the tiers' capacities in chunks nested from the fastest (a chunk at distance d is in
  the first tier whose cumulative capacity exceeds d).
- :func:`conversation_trace` builds the chunk trace of a multi-round chat workload (a shared system
  prompt, each user's growing history), as the bench's workloads send it.

Everything here is arithmetic on inputs: no lab, no network.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: bytes per element of the dtypes a KV cache is kept in (config.json's torch_dtype, vLLM's
#: --kv-cache-dtype values)
DTYPE_BYTES = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "half": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
}


class PlanError(ValueError):
    """An input the planner cannot use, named."""


@dataclass(frozen=True)
class ModelKV:
    """The KV-cache shape of a model."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int

    @classmethod
    def from_config(cls, config: dict, kv_cache_dtype: str | None = None) -> ModelKV:
        """From a Hugging Face ``config.json`` dict; *kv_cache_dtype* (``fp8``, ``bfloat16``...)
        overrides its ``torch_dtype`` as vLLM's ``--kv-cache-dtype`` does."""
        try:
            layers = int(config["num_hidden_layers"])
            heads = int(config["num_attention_heads"])
        except KeyError as e:
            raise PlanError(f"config.json lacks {e.args[0]}") from None
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config.get("hidden_size", 0)) // heads)
        dtype = kv_cache_dtype or config.get("torch_dtype") or config.get("dtype") or "bfloat16"
        if dtype not in DTYPE_BYTES:
            raise PlanError(f"KV-cache dtype {dtype!r} is not one of {sorted(DTYPE_BYTES)}")
        if min(layers, kv_heads, head_dim) <= 0:
            raise PlanError(f"config.json: layers {layers}, KV heads {kv_heads}, head dim {head_dim}")
        return cls(layers, kv_heads, head_dim, DTYPE_BYTES[dtype])

    @classmethod
    def from_file(cls, path: Path | str, kv_cache_dtype: str | None = None) -> ModelKV:
        """From a ``config.json`` file (or a model directory holding one)."""
        p = Path(path)
        p = p / "config.json" if p.is_dir() else p
        try:
            return cls.from_config(json.loads(p.read_text()), kv_cache_dtype)
        except (OSError, json.JSONDecodeError) as e:
            raise PlanError(f"{p}: {e}") from None

    @property
    def bytes_per_token(self) -> int:
        """K and V of every layer and KV head for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def chunk_bytes(self, chunk_tokens: int) -> int:
        """The value size of one LMCache chunk of *chunk_tokens* tokens (one KV-tier value)."""
        return chunk_tokens * self.bytes_per_token

    def tokens_in(self, capacity_bytes: float) -> int:
        """How many tokens' KV cache fit in *capacity_bytes*."""
        return int(capacity_bytes // self.bytes_per_token)


def stack_distances(trace: Iterable[Hashable]) -> list[int | None]:
    """LRU stack distance of each access: distinct keys used since the key's previous access
    (0: used again right away), None for its first access."""
    keys = list(trace)
    n = len(keys)
    tree = [0] * (n + 1)  # Fenwick tree: 1 at each key's latest access position

    def add(i: int, v: int) -> None:
        i += 1
        while i <= n:
            tree[i] += v
            i += i & -i

    def prefix(i: int) -> int:  # sum over positions [0, i)
        s = 0
        while i > 0:
            s += tree[i]
            i -= i & -i
        return s

    last: dict[Hashable, int] = {}
    out: list[int | None] = []
    for t, k in enumerate(keys):
        p = last.get(k)
        if p is None:
            out.append(None)
        else:
            out.append(prefix(t) - prefix(p + 1))
            add(p, -1)
        add(t, 1)
        last[k] = t
    return out


def tier_hit_shares(distances: Sequence[int | None], capacities: Sequence[int]) -> list[float]:
    """Share of all lookups each tier serves, for tiers of *capacities* chunks, fastest first,
    each holding what the faster ones evicted (an exclusive LRU hierarchy); the last entry of the
    result is the share no tier serves (first uses and distances beyond every tier)."""
    if any(c < 0 for c in capacities):
        raise PlanError(f"tier capacities must be 0 or more chunks, got {list(capacities)}")
    bounds, total = [], 0
    for c in capacities:
        total += c
        bounds.append(total)
    served = [0] * (len(capacities) + 1)
    for d in distances:
        tier = len(capacities) if d is None else bisect.bisect_right(bounds, d)  # first bound above d
        served[tier] += 1
    n = len(distances)
    return [s / n for s in served] if n else [0.0] * len(served)


def conversation_trace(
    users: int, shared_tokens: int, tokens_per_round: int, rounds: int, chunk_tokens: int
) -> list[tuple]:
    """The full chunks each request looks up, in order: every round each user in turn sends the
    shared prompt, then its own history (all earlier rounds' turns and this one's). Keys: (``s``, i)
    for the shared prompt's chunks, (``u``, user, i) for a user's; a chunk spans the shared/own
    boundary only as a user chunk (LMCache hashes the whole prefix, so it is the user's)."""
    if min(users, rounds, chunk_tokens) <= 0 or min(shared_tokens, tokens_per_round) < 0:
        raise PlanError("users, rounds and chunk_tokens must be positive, token counts 0 or more")
    trace: list[tuple] = []
    shared_chunks = shared_tokens // chunk_tokens
    for r in range(1, rounds + 1):
        for u in range(users):
            total = shared_tokens + r * tokens_per_round
            trace += [("s", i) for i in range(shared_chunks)]
            trace += [("u", u, i) for i in range(shared_chunks, total // chunk_tokens)]
    return trace
