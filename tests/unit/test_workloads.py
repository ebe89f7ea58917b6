"""Workload generation with a real byte-level BPE tokenizer (tests/unit/conftest.py): exact token
counts, really shared prefixes."""

from __future__ import annotations

import itertools

import pytest

from kvstack.workloads import (
    TINY_MODEL_KV_BYTES_PER_TOKEN,
    Conversation,
    TokenizerAdapter,
    Turn,
    common_prefix_len,
    join,
    kv_bytes_per_token,
    long_doc_qa,
    multi_round_qa,
    shared_prefix,
    unique_prefix_tokens,
    users_for_kv_ratio,
)
from kvstack_node import tinymodel


@pytest.fixture(scope="module")
def tok(tokenizer_json):
    return TokenizerAdapter.from_file(tokenizer_json.parent)  # a model directory, as on a node


def n_tokens(tok, text: str) -> int:
    return len(tok.encode(text))


def test_adapter_loads_file_and_returns_ids(tok, tokenizer_json):
    ids = tok.encode("hello world")
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    assert TokenizerAdapter.from_file(tokenizer_json).encode("hello world") == ids
    assert len(tinymodel.single_token_words(tok)) > 200


def test_join_is_additive_in_tokens(tok):
    a, b = tinymodel.make_prompt(tok, 17, 1), tinymodel.make_prompt(tok, 5, 2)
    assert tok.encode(join([a, b])) == tok.encode(a) + tok.encode(b)
    # an answer as the model returns it (leading space from its first token) joins the same way
    assert tok.encode(join([a, " " + b + " ", ""])) == tok.encode(a) + tok.encode(b)


def test_multi_round_qa_exact_counts_and_growing_history(tok):
    S, Q, A, N, R = 40, 7, 5, 3, 4
    w = multi_round_qa(tok, users=N, rounds=R, system_tokens=S, question_tokens=Q, answer_tokens=A, seed=3)
    assert w.name == "multi-round-qa" and len(w.conversations) == N and w.requests == N * R
    prompts = []
    for c in w.conversations:
        assert c.keep_history and n_tokens(tok, c.prefix) == S
        # stand-ins for the model's answers: A tokens each, with the leading space a completion has
        answers = [" " + tinymodel.make_prompt(tok, A, 100 + r) for r in range(R)]
        user_prompts = []
        for r, t in enumerate(c.turns):
            assert n_tokens(tok, t.question) == Q and t.max_tokens == A
            p = c.prompt(r, answers[:r])
            assert n_tokens(tok, p) == S + r * (Q + A) + Q == c.prompt_tokens(r)
            user_prompts.append(tok.encode(p))
        # each round's prompt extends the previous one: the whole history is a reusable prefix
        for prev, nxt in itertools.pairwise(user_prompts):
            assert nxt[: len(prev)] == prev
        prompts += user_prompts
    # users share exactly the system prompt
    firsts = [tok.encode(c.prompt(0)) for c in w.conversations]
    for i in range(N):
        for j in range(i + 1, N):
            assert common_prefix_len(firsts[i], firsts[j]) == S
    assert w.working_set_tokens == S + N * (R * Q + (R - 1) * A) == unique_prefix_tokens(prompts)
    assert w.max_prompt_tokens() == S + R * (Q + A)
    with pytest.raises(ValueError):
        w.conversations[0].prompt(2, answers[:1])  # round 2 needs two answers


def test_multi_round_qa_user_history(tok):
    """Each user's own history sits after the shared system prompt: users share exactly S tokens,
    every prompt starts with S + H tokens of its user's prefix, the working set counts H per user."""
    S, H, Q, A, N, R = 24, 50, 6, 4, 3, 3
    w = multi_round_qa(
        tok, users=N, rounds=R, system_tokens=S, history_tokens=H, question_tokens=Q, answer_tokens=A, seed=5
    )
    answers = [" " + tinymodel.make_prompt(tok, A, 200 + r) for r in range(R)]
    prompts = []
    for c in w.conversations:
        assert c.prefix_tokens == S + H and n_tokens(tok, c.prefix) == S + H
        for r in range(R):
            p = c.prompt(r, answers[:r])
            assert n_tokens(tok, p) == S + H + r * (Q + A) + Q == c.prompt_tokens(r)
            prompts.append(tok.encode(p))
    firsts = [tok.encode(c.prompt(0)) for c in w.conversations]
    assert all(common_prefix_len(a, b) == S for a, b in itertools.combinations(firsts, 2))
    assert w.working_set_tokens == S + N * (H + R * Q + (R - 1) * A) == unique_prefix_tokens(prompts)
    assert w.params["history_tokens"] == H
    assert users_for_kv_ratio(
        2, 4096 * 1000, rounds=R, system_tokens=S, history_tokens=H, question_tokens=Q, answer_tokens=A
    ) == -(-(2000 - S) // (H + R * Q + (R - 1) * A))


def test_multi_round_qa_is_reproducible(tok):
    kw = dict(users=2, rounds=2, system_tokens=8, question_tokens=3, answer_tokens=2)
    a, b = multi_round_qa(tok, seed=1, **kw), multi_round_qa(tok, seed=1, **kw)
    assert a.conversations == b.conversations
    assert multi_round_qa(tok, seed=2, **kw).conversations != a.conversations


def test_long_doc_qa_exact_counts_shared_documents_and_shuffle(tok):
    D, L, R, Q, A = 3, 300, 4, 6, 8
    w = long_doc_qa(tok, documents=D, doc_tokens=L, repeats=R, question_tokens=Q, answer_tokens=A, seed=5)
    assert w.requests == D * R
    ids = [c.id for c in w.conversations]
    assert sorted(ids) == sorted(f"doc{d}/q{r}" for d in range(D) for r in range(R))
    assert ids != sorted(ids, key=lambda i: (int(i[3 : i.index("/")]), int(i.split("q")[-1])))  # shuffled
    prompts = {}
    for c in w.conversations:
        assert n_tokens(tok, c.prefix) == L and not c.keep_history
        p = c.prompt(0)
        assert n_tokens(tok, p) == L + Q == c.prompt_tokens(0)
        prompts[c.id] = tok.encode(p)
    for d in range(D):
        for r in range(1, R):
            assert common_prefix_len(prompts[f"doc{d}/q0"], prompts[f"doc{d}/q{r}"]) == L
        for e in range(d + 1, D):
            assert common_prefix_len(prompts[f"doc{d}/q0"], prompts[f"doc{e}/q0"]) == 0
    assert w.working_set_tokens == D * L + D * R * Q == unique_prefix_tokens(prompts.values())
    again = long_doc_qa(tok, documents=D, doc_tokens=L, repeats=R, question_tokens=Q, answer_tokens=A, seed=5)
    assert [c.id for c in again.conversations] == ids
    # no question: the bare document repeated
    bare = long_doc_qa(tok, documents=2, doc_tokens=50, repeats=3, question_tokens=0, answer_tokens=4)
    assert {c.prompt(0) for c in bare.conversations} == {c.prefix for c in bare.conversations}
    assert (
        bare.working_set_tokens
        == 100
        == unique_prefix_tokens(tok.encode(c.prompt(0)) for c in bare.conversations)
    )


def test_shared_prefix_exact_counts_and_sharing(tok):
    P, K, Lp, Ls, A = 4, 5, 64, 9, 3
    w = shared_prefix(
        tok, prefixes=P, suffixes=K, prefix_tokens=Lp, suffix_tokens=Ls, answer_tokens=A, seed=7
    )
    assert w.requests == P * K
    enc = {c.id: tok.encode(c.prompt(0)) for c in w.conversations}
    assert all(len(e) == Lp + Ls for e in enc.values())
    for p in range(P):
        for k in range(1, K):
            assert common_prefix_len(enc[f"p{p}/s0"], enc[f"p{p}/s{k}"]) == Lp
        for q in range(p + 1, P):
            assert common_prefix_len(enc[f"p{p}/s0"], enc[f"p{q}/s0"]) == 0
    assert w.working_set_tokens == P * Lp + P * K * Ls == unique_prefix_tokens(enc.values())
    ordered = shared_prefix(
        tok,
        prefixes=P,
        suffixes=K,
        prefix_tokens=Lp,
        suffix_tokens=Ls,
        answer_tokens=A,
        seed=7,
        shuffle=False,
    )
    assert [c.id for c in ordered.conversations] == [f"p{p}/s{k}" for p in range(P) for k in range(K)]
    assert sorted(c.id for c in w.conversations) == sorted(c.id for c in ordered.conversations)


def test_working_set_sizing():
    assert kv_bytes_per_token(4, 2, 64, 4) == TINY_MODEL_KV_BYTES_PER_TOKEN == 4096
    assert kv_bytes_per_token(32, 8, 128, 2) == 131072  # a Llama-3-8B-like bf16 model: 128 KiB/token
    assert unique_prefix_tokens([[1, 2, 3], [1, 2, 4], [1, 5], [1, 2, 3]]) == 5  # 1, 1-2, 1-2-3, 1-2-4, 1-5
    assert unique_prefix_tokens([]) == 0
    # 1 GiB of KV space holds 262144 tokens of the tiny model; 4x needs 1048576 tokens:
    # (1048576 - 1000) / (10 * 200 + 9 * 100) = 361.2 -> 362 users
    n = users_for_kv_ratio(4, 1 << 30, rounds=10, system_tokens=1000, question_tokens=200, answer_tokens=100)
    assert n == 362
    conv = Conversation("c", "x", 1, (Turn("q", 1, 1),))
    assert conv.prompt_tokens(0) == 2


def test_workload_ratio_and_summary(tok):
    w = shared_prefix(tok, prefixes=2, suffixes=2, prefix_tokens=1000, suffix_tokens=24, answer_tokens=8)
    assert w.working_set_tokens == 2096
    assert w.working_set_bytes() == 2096 * 4096
    assert w.kv_space_ratio(1 << 20) == pytest.approx(2096 * 4096 / (1 << 20))
    assert w.kv_space_ratio(1 << 20, kv_bytes_per_token=2048) == pytest.approx(2096 * 2048 / (1 << 20))
    s = w.summary()
    assert s["requests"] == 4 and s["max_prompt_tokens"] == 1032 and s["params"]["prefixes"] == 2
