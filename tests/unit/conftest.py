"""Unit-test fixtures.

``tokenizer_json``: a real byte-level BPE tokenizer trained here with the `tokenizers` library alone,
like tinymodel's (same corpus function, pre-tokenizer and special tokens), smaller:
tinymodel.train_tokenizer wraps its result in transformers, which the controller venv does not have.

``redis``: a throwaway redis-server (Debian's, which bootstrap.sh installs) on a free loopback
port, with ``local_redis.PASSWORD``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from local_redis import local_redis

from kvstack_node import tinymodel


@pytest.fixture(scope="session")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory):
    """A small byte-level BPE tokenizer saved as tokenizer.json (trains in well under a second)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=list(tinymodel.SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tinymodel.corpus(0, n_words=3000, n_lines=3000), trainer=trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A throwaway redis-server on a free loopback port with ``local_redis.PASSWORD``."""
    with local_redis(tmp_path_factory.mktemp("redis")) as addr:
        yield addr
