"""A tiny random-weight Llama with its own BPE tokenizer, made offline, for serving tests and benches.

Run on a serving node inside the vLLM venv (``torch``, ``transformers`` and ``tokenizers`` come with
vLLM)::

    python -m kvstack_node.tinymodel OUTDIR [--layers 4 --hidden 256 --kv-heads 2 --heads 4 \\
        --vocab 8192 --max-pos 8192 --seed 0 --dtype float32]

Everything derives from ``--seed``: the training text, the tokenizer and the weights; no hub access.
This module imports no heavy library at import time, so the controller (no torch) can import it.

Exact prompt lengths: the tokenizer is byte-level BPE (GPT-2 pre-tokenizer, ``add_prefix_space``)
and adds no special tokens by itself. Its pre-tokenizer cuts text into `` word`` pieces, so a text
of space-separated words that each encode to one token encodes to exactly one token per word.
:func:`make_prompt` draws such words and checks the count by encoding the result; texts from it
joined with one space add up (``n1 + n2`` tokens). vLLM's ``/v1/completions`` then reports
``prompt_tokens == n``; the chat template adds its own tokens around the messages. Decoding puts
back the prefix space: ``decode(encode(t)) == " " + t``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def corpus(seed: int, n_words: int = 20_000, n_lines: int = 20_000) -> list[str]:
    """Reproducible training text: lines of pseudo-words drawn Zipf-like from a fixed lexicon."""
    rng = random.Random(seed)
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS] + [
        c + v + e for c in _CONSONANTS for v in _VOWELS for e in "nrst"
    ]
    lexicon = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(n_words)})
    weights = [1.0 / (rank + 1) for rank in range(len(lexicon))]
    rng.shuffle(lexicon)
    return [" ".join(rng.choices(lexicon, weights, k=rng.randint(8, 40))) for _ in range(n_lines)]


def train_tokenizer(seed: int, vocab: int) -> Any:
    """Train a byte-level BPE tokenizer on :func:`corpus`; returns a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    unk, bos, eos, pad = SPECIAL_TOKENS
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=unk, bos_token=bos, eos_token=eos, pad_token=pad
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1 << 30
    return fast


def build(
    outdir: Path,
    *,
    layers: int = 4,
    hidden: int = 256,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 8192,
    max_pos: int = 8192,
    seed: int = 0,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Write tokenizer and random-weight ``LlamaForCausalLM`` (safetensors) to *outdir*; returns a summary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_tokenizer(seed, vocab)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_pos,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    outdir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(outdir, safe_serialization=True)
    tok.save_pretrained(outdir)
    for f in outdir.iterdir():  # safetensors writes 0600: let a service user read the model
        f.chmod(0o644)
    params = sum(p.numel() for p in model.parameters())
    return {"outdir": str(outdir), "vocab": len(tok), "params": params, "dtype": dtype, "seed": seed}


def single_token_words(tokenizer: Any) -> list[str]:
    """Letters-only words that encode, with a leading space, to exactly one token (sorted by id)."""
    marker = "\u0120"  # byte-level BPE's visible space
    pieces = sorted((i, t[1:]) for t, i in tokenizer.get_vocab().items() if t.startswith(marker))
    words = [w for _, w in pieces if w.isascii() and w.isalpha()]
    return [w for w in words if len(tokenizer.encode(" " + w, add_special_tokens=False)) == 1]


def make_prompt(tokenizer: Any, n_tokens: int, seed: int) -> str:
    """Text that encodes (without special tokens) to exactly *n_tokens* tokens; same seed, same text."""
    pool = getattr(tokenizer, "_kvstack_words", None)
    if pool is None:
        pool = single_token_words(tokenizer)
        tokenizer._kvstack_words = pool
    rng = random.Random(seed)
    text = " ".join(rng.choice(pool) for _ in range(n_tokens))
    got = len(tokenizer.encode(text, add_special_tokens=False))
    if got != n_tokens:
        raise ValueError(f"make_prompt: wanted {n_tokens} tokens, text encodes to {got}")
    return text


def main(argv: list[str] | None = None) -> int:
    """Command line: build the model into OUTDIR, then check the tokenizer round trip from disk."""
    p = argparse.ArgumentParser(prog="python -m kvstack_node.tinymodel", description=__doc__.split("\n")[0])
    p.add_argument("outdir", type=Path)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--max-pos", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    a = p.parse_args(argv)
    summary = build(
        a.outdir,
        layers=a.layers,
        hidden=a.hidden,
        heads=a.heads,
        kv_heads=a.kv_heads,
        vocab=a.vocab,
        max_pos=a.max_pos,
        seed=a.seed,
        dtype=a.dtype,
    )
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.outdir)
    summary["single_token_words"] = len(single_token_words(tok))
    for n in (1, 255, 256, 2000):
        make_prompt(tok, n, seed=n)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
