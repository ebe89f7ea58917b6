"""The capacity planner's arithmetic (kvstack.plan) against hand-computed cases."""

from __future__ import annotations

import json

import pytest

from kvstack import plan

LLAMA_8B = {  # Meta-Llama-3.1-8B's config.json, the fields the planner reads
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_size": 4096,
    "torch_dtype": "bfloat16",
}
MiB = 1 << 20


def test_llama_8b_bf16_costs_128_kib_per_token_and_32_mib_per_256_token_chunk():
    m = plan.ModelKV.from_config(LLAMA_8B)
    assert m.bytes_per_token == 2 * 32 * 8 * 128 * 2 == 128 * 1024
    assert m.chunk_bytes(256) == 32 * MiB
    assert m.tokens_in(80 * (1 << 30)) == 655_360  # 80 GiB of HBM for KV: 640k tokens


def test_kv_cache_dtype_override_and_explicit_head_dim(tmp_path):
    assert plan.ModelKV.from_config(LLAMA_8B, kv_cache_dtype="fp8").bytes_per_token == 64 * 1024
    tiny = {"num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32}
    (tmp_path / "config.json").write_text(json.dumps({**tiny, "torch_dtype": "float32"}))
    assert plan.ModelKV.from_file(tmp_path).bytes_per_token == 2 * 4 * 2 * 32 * 4  # a model directory
    assert plan.ModelKV.from_config({**tiny}).dtype_bytes == 2  # no dtype: bf16


@pytest.mark.parametrize(
    ("config", "dtype", "named"),
    [({"num_attention_heads": 8}, None, "num_hidden_layers"), (LLAMA_8B, "int3", "int3")],
)
def test_bad_model_inputs_are_named(config, dtype, named):
    with pytest.raises(plan.PlanError, match=named):
        plan.ModelKV.from_config(config, dtype)


def test_stack_distances_by_hand():
    # a b c a b d a: the second a has seen b, c since its first use (2), the second b c, a (2),
    # the third a b, d (2)
    assert plan.stack_distances("abcabda") == [None, None, None, 2, 2, None, 2]
    assert plan.stack_distances("aab") == [None, 0, None]


def test_stack_distances_match_a_naive_lru_stack():
    import random

    rng = random.Random(7)
    trace = [rng.randrange(40) for _ in range(2000)]
    stack: list[int] = []
    naive = []
    for k in trace:
        naive.append(stack.index(k) if k in stack else None)
        if k in stack:
            stack.remove(k)
        stack.insert(0, k)
    assert plan.stack_distances(trace) == naive


def test_tier_hit_shares_nest_the_tiers():
    d = plan.stack_distances("abcabda")  # distances None None None 2 2 None 2
    assert plan.tier_hit_shares(d, [2]) == [0, 1]  # a cache of 2 chunks misses every reuse
    assert plan.tier_hit_shares(d, [3]) == [3 / 7, 4 / 7]
    assert plan.tier_hit_shares(d, [1, 2, 100]) == [0, 3 / 7, 0, 4 / 7]  # the second tier holds them
    with pytest.raises(plan.PlanError, match="capacities"):
        plan.tier_hit_shares(d, [-1])


def test_conversation_trace_reuses_the_shared_prompt_and_each_history():
    # 2 users, a 512-token shared prompt, 256 tokens per round, 2 rounds, 256-token chunks
    t = plan.conversation_trace(2, 512, 256, 2, 256)
    r1 = [("s", 0), ("s", 1), ("u", 0, 2), ("s", 0), ("s", 1), ("u", 1, 2)]
    r2 = [("s", 0), ("s", 1), ("u", 0, 2), ("u", 0, 3), ("s", 0), ("s", 1), ("u", 1, 2), ("u", 1, 3)]
    assert t == r1 + r2
    shares = plan.tier_hit_shares(plan.stack_distances(t), [1000])
    assert shares == [8 / 14, 6 / 14]  # first uses: s0 s1, each user's chunks 2 and 3


def test_the_labs_tiny_model_matches_what_the_lab_measured():
    """The lab's model (roles/vllm's generator: 4 layers, hidden 256, 4 heads, 2 KV heads) served
    in float32: 4 KiB per token, so vLLM's 128 blocks of 128 tokens hold 64 MiB and one 256-token
    LMCache chunk is the 1 MiB value the KV tier stores (README, "The lab")."""
    tiny = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2}
    m = plan.ModelKV.from_config(tiny, kv_cache_dtype="float32")
    assert m.bytes_per_token == 4096
    assert 128 * 128 * m.bytes_per_token == 64 * MiB
    assert m.chunk_bytes(256) == MiB
