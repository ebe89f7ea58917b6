"""Benchmark workloads made offline with the served model's own tokenizer, to exact token counts.

Every workload is a list of :class:`Conversation`: a prefix text (a shared system prompt, a long
document, a shared random prefix) followed by one or more :class:`Turn` (a question with its
answer length in tokens, sent as ``max_tokens`` with ``ignore_eos``). The load generator builds
turn *r*'s prompt with :meth:`Conversation.prompt`, passing the answers the model returned to the
earlier turns when the conversation keeps its history (multi-round QA).

Texts come from :func:`kvstack_node.tinymodel.make_prompt`: space-separated words that encode to one
token each, so pieces joined with one space encode to the sum of their token counts and a shared
text prefix is a shared token prefix. Sibling pieces (the prefixes of a workload, the suffixes
after one prefix, each user's first question) start with distinct tokens, so prompts share
exactly the intended prefixes and :func:`unique_prefix_tokens` of a workload equals its analytic
:attr:`Workload.working_set_tokens`.

The tokenizer is any object with ``encode(text, add_special_tokens=False) -> list[int]`` and
``get_vocab()``: a ``transformers`` fast tokenizer, or :class:`TokenizerAdapter` around a
``tokenizers.Tokenizer`` loaded from the model's ``tokenizer.json`` (no ``transformers`` needed).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kvstack_node.tinymodel import make_prompt

#: KV bytes per token of the lab's tiny model: 4 layers x 2 KV heads x head dim 64 x (K, V) x 4 B fp32.
TINY_MODEL_KV_BYTES_PER_TOKEN = 4 * 2 * 64 * 2 * 4


class WordTokenizer(Protocol):
    """What the generators need from a tokenizer (a subset of ``transformers`` tokenizers)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of *text*."""
        ...

    def get_vocab(self) -> dict[str, int]:
        """Token string -> id."""
        ...


class TokenizerAdapter:
    """A ``tokenizers.Tokenizer`` with the :class:`WordTokenizer` interface (``encode`` returns ids)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: str | Path) -> TokenizerAdapter:
        """Load a model's ``tokenizer.json`` (or a model directory holding one)."""
        from tokenizers import Tokenizer

        p = Path(path)
        return cls(Tokenizer.from_file(str(p / "tokenizer.json" if p.is_dir() else p)))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of *text*, without special tokens by default."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def get_vocab(self) -> dict[str, int]:
        """Token string -> id."""
        return self.tokenizer.get_vocab()


@dataclass(frozen=True)
class Turn:
    """One request of a conversation: the question text and the answer length to ask for."""

    question: str
    question_tokens: int
    max_tokens: int


def join(parts: Iterable[str]) -> str:
    """Join prompt pieces with one space, skipping empty ones; answers are stripped of outer spaces.

    The model's answer text starts with the space its first token carries; stripping it and joining
    with one space puts that space back, so the re-encoded history matches the generated tokens.
    """
    return " ".join(s for s in (p.strip() for p in parts) if s)


@dataclass(frozen=True)
class Conversation:
    """A prefix and its turns; ``keep_history`` makes each turn's prompt carry the earlier turns."""

    id: str
    prefix: str
    prefix_tokens: int
    turns: tuple[Turn, ...]
    keep_history: bool = False

    def prompt(self, turn: int, answers: Sequence[str] = ()) -> str:
        """Prompt of turn *turn*: prefix, earlier questions and *answers* (with history), question.

        With ``keep_history`` the answers to turns ``0..turn-1`` are required: the load generator
        passes what the model returned.
        """
        if not 0 <= turn < len(self.turns):
            raise IndexError(f"{self.id}: no turn {turn} (has {len(self.turns)})")
        parts = [self.prefix]
        if self.keep_history:
            if len(answers) < turn:
                raise ValueError(f"{self.id}: turn {turn} needs {turn} answers, got {len(answers)}")
            for t, a in zip(self.turns[:turn], answers, strict=False):
                parts += [t.question, a]
        parts.append(self.turns[turn].question)
        return join(parts)

    def prompt_tokens(self, turn: int, answer_tokens: Sequence[int] | None = None) -> int:
        """Expected prompt length of turn *turn*, given the answers' lengths (default: ``max_tokens``)."""
        n = self.prefix_tokens + self.turns[turn].question_tokens
        if self.keep_history:
            answers = answer_tokens if answer_tokens is not None else [t.max_tokens for t in self.turns]
            n += sum(t.question_tokens + a for t, a in zip(self.turns[:turn], answers, strict=False))
        return n


@dataclass
class Workload:
    """A named list of conversations with the parameters that made it and its working set."""

    name: str
    conversations: list[Conversation]
    params: dict[str, Any]
    working_set_tokens: int

    @property
    def requests(self) -> int:
        """Number of requests (turns) in the workload."""
        return sum(len(c.turns) for c in self.conversations)

    def max_prompt_tokens(self) -> int:
        """Longest prompt plus its answer, in tokens (answers at ``max_tokens``): check it against
        vLLM's ``max_model_len``."""
        return max(
            (
                c.prompt_tokens(t) + c.turns[t].max_tokens
                for c in self.conversations
                for t in range(len(c.turns))
            ),
            default=0,
        )

    def working_set_bytes(self, kv_bytes_per_token: int = TINY_MODEL_KV_BYTES_PER_TOKEN) -> int:
        """KV-cache bytes of the working set."""
        return self.working_set_tokens * kv_bytes_per_token

    def kv_space_ratio(
        self, kv_space_bytes: int, kv_bytes_per_token: int = TINY_MODEL_KV_BYTES_PER_TOKEN
    ) -> float:
        """Working set over vLLM's KV space: above 1 the prefix cache alone cannot hold it."""
        return self.working_set_bytes(kv_bytes_per_token) / kv_space_bytes

    def summary(self, kv_bytes_per_token: int = TINY_MODEL_KV_BYTES_PER_TOKEN) -> dict[str, Any]:
        """JSON-ready description for a run's results."""
        return {
            "name": self.name,
            "params": dict(self.params),
            "conversations": len(self.conversations),
            "requests": self.requests,
            "working_set_tokens": self.working_set_tokens,
            "working_set_bytes": self.working_set_bytes(kv_bytes_per_token),
            "max_prompt_tokens": self.max_prompt_tokens(),
        }


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """KV-cache bytes one token takes: layers x KV heads x head dim x 2 (K and V) x dtype size."""
    return layers * kv_heads * head_dim * 2 * dtype_bytes


def unique_prefix_tokens(sequences: Iterable[Sequence[int]]) -> int:
    """Distinct token prefixes over *sequences* (the nodes of their token trie): the tokens a perfect
    prefix cache must hold to serve every sequence from cache."""
    seqs = sorted(tuple(s) for s in sequences)
    total, prev = 0, ()
    for s in seqs:
        common = 0
        for a, b in zip(prev, s, strict=False):
            if a != b:
                break
            common += 1
        total += len(s) - common
        prev = s
    return total


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def derive_seed(base: int, *parts: object) -> int:
    """A stable 64-bit seed from *base* and labels (no Python hash randomisation)."""
    key = "/".join(map(str, (base, *parts))).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def _text(tok: WordTokenizer, n_tokens: int, seed: int, taken: set[int] | None = None) -> str:
    """``make_prompt`` text of *n_tokens*; with *taken*, its first token is not in it (then added)."""
    if n_tokens == 0:
        return ""
    for attempt in range(1000):
        text = make_prompt(tok, n_tokens, derive_seed(seed, attempt))
        if taken is None:
            return text
        first = tok.encode(text.split(" ", 1)[0], add_special_tokens=False)[0]
        if first not in taken:
            taken.add(first)
            return text
    raise ValueError("could not draw a text with a distinct first token: vocabulary too small")


def _check(**sizes: int) -> None:
    for k, v in sizes.items():
        if v < 0:
            raise ValueError(f"{k} must be >= 0, got {v}")


def multi_round_qa(
    tok: WordTokenizer,
    *,
    users: int,
    rounds: int,
    system_tokens: int,
    question_tokens: int,
    answer_tokens: int,
    history_tokens: int = 0,
    seed: int = 0,
) -> Workload:
    """*users* conversations of *rounds* turns after one shared system prompt, history kept.

    Round r's prompt of a user is ``system + history + (q_0 + a_0) + ... + (q_{r-1} + a_{r-1}) + q_r``
    with the model's actual answers; ``history`` is the user's own earlier context of
    *history_tokens* (production-stack's ``--user-history-prompt``; 0 for none). Working set (every
    prompt's tokens, answers at *answer_tokens*): ``S + users * (H + rounds * Q + (rounds - 1) * A)``.
    """
    _check(
        users=users,
        rounds=rounds,
        system_tokens=system_tokens,
        answer_tokens=answer_tokens,
        history_tokens=history_tokens,
    )
    if question_tokens < 1 or rounds < 1:
        raise ValueError("multi-round QA needs question_tokens >= 1 and rounds >= 1")
    system = _text(tok, system_tokens, derive_seed(seed, "system"))
    first_tokens: set[int] = set()
    history_starts: set[int] = set()
    convs = []
    for u in range(users):
        history = _text(tok, history_tokens, derive_seed(seed, "history", u), history_starts)
        turns = tuple(
            Turn(
                _text(tok, question_tokens, derive_seed(seed, "q", u, r), first_tokens if r == 0 else None),
                question_tokens,
                answer_tokens,
            )
            for r in range(rounds)
        )
        prefix = join((system, history))
        convs.append(
            Conversation(f"user{u}", prefix, system_tokens + history_tokens, turns, keep_history=True)
        )
    ws = system_tokens + users * (history_tokens + rounds * question_tokens + (rounds - 1) * answer_tokens)
    params = {
        "users": users,
        "rounds": rounds,
        "system_tokens": system_tokens,
        "history_tokens": history_tokens,
        "question_tokens": question_tokens,
        "answer_tokens": answer_tokens,
        "seed": seed,
    }
    return Workload("multi-round-qa", convs, params, ws if users else 0)


def _prefixed(
    tok: WordTokenizer,
    n_prefixes: int,
    n_suffixes: int,
    prefix_tokens: int,
    suffix_tokens: int,
    answer_tokens: int,
    seed: int,
    seed_tags: tuple[str, str],
    id_tags: tuple[str, str],
) -> list[Conversation]:
    """*n_prefixes* shared prefixes, each followed by *n_suffixes* single-turn suffixes.

    Sibling pieces start with distinct tokens, so prefixes are shared exactly as intended.
    *seed_tags* name prefix and suffix in the seeds, *id_tags* in the conversation ids.
    """
    first, second = seed_tags
    short = id_tags
    p_starts: set[int] = set()
    convs = []
    for i in range(n_prefixes):
        prefix = _text(tok, prefix_tokens, derive_seed(seed, first, i), p_starts)
        s_starts: set[int] = set()
        for k in range(n_suffixes):
            text = _text(tok, suffix_tokens, derive_seed(seed, second, i, k), s_starts)
            convs.append(
                Conversation(
                    f"{short[0]}{i}/{short[1]}{k}",
                    prefix,
                    prefix_tokens,
                    (Turn(text, suffix_tokens, answer_tokens),),
                )
            )
    return convs


def long_doc_qa(
    tok: WordTokenizer,
    *,
    documents: int,
    doc_tokens: int,
    repeats: int,
    question_tokens: int,
    answer_tokens: int,
    seed: int = 0,
) -> Workload:
    """*documents* long documents, each asked *repeats* times, in an order shuffled with *seed*.

    Each request is ``document + question`` (a distinct question per request; ``question_tokens=0``
    repeats the bare document). Working set: ``D * L + D * R * Q``.
    """
    _check(documents=documents, repeats=repeats, question_tokens=question_tokens, answer_tokens=answer_tokens)
    if doc_tokens < 1:
        raise ValueError("doc_tokens must be >= 1")
    convs = _prefixed(
        tok, documents, repeats, doc_tokens, question_tokens, answer_tokens, seed, ("doc", "q"), ("doc", "q")
    )
    random.Random(derive_seed(seed, "order")).shuffle(convs)
    ws = documents * doc_tokens + (documents * repeats * question_tokens if repeats else 0)
    params = {
        "documents": documents,
        "doc_tokens": doc_tokens,
        "repeats": repeats,
        "question_tokens": question_tokens,
        "answer_tokens": answer_tokens,
        "seed": seed,
    }
    return Workload("long-doc-qa", convs, params, ws if repeats else 0)


def shared_prefix(
    tok: WordTokenizer,
    *,
    prefixes: int,
    suffixes: int,
    prefix_tokens: int,
    suffix_tokens: int,
    answer_tokens: int,
    seed: int = 0,
    shuffle: bool = True,
) -> Workload:
    """*prefixes* random prefixes, each followed by *suffixes* random suffixes (one request each).

    Working set: ``P * Lp + P * K * Ls``. *shuffle* mixes the requests of all prefixes (seeded).
    """
    _check(prefixes=prefixes, suffixes=suffixes, answer_tokens=answer_tokens)
    if prefix_tokens < 1 or suffix_tokens < 1:
        raise ValueError("prefix_tokens and suffix_tokens must be >= 1")
    convs = _prefixed(
        tok,
        prefixes,
        suffixes,
        prefix_tokens,
        suffix_tokens,
        answer_tokens,
        seed,
        ("prefix", "suffix"),
        ("p", "s"),
    )
    if shuffle:
        random.Random(derive_seed(seed, "order")).shuffle(convs)
    ws = prefixes * prefix_tokens + prefixes * suffixes * suffix_tokens
    params = {
        "prefixes": prefixes,
        "suffixes": suffixes,
        "prefix_tokens": prefix_tokens,
        "suffix_tokens": suffix_tokens,
        "answer_tokens": answer_tokens,
        "seed": seed,
    }
    return Workload("shared-prefix", convs, params, ws if suffixes else 0)


def users_for_kv_ratio(
    ratio: float,
    kv_space_bytes: int,
    *,
    rounds: int,
    system_tokens: int,
    question_tokens: int,
    answer_tokens: int,
    history_tokens: int = 0,
    kv_bytes_per_token: int = TINY_MODEL_KV_BYTES_PER_TOKEN,
) -> int:
    """Fewest multi-round QA users whose working set is at least *ratio* x vLLM's KV space."""
    need = ratio * kv_space_bytes / kv_bytes_per_token - system_tokens
    per_user = history_tokens + rounds * question_tokens + (rounds - 1) * answer_tokens
    return max(1, math.ceil(need / per_user))
