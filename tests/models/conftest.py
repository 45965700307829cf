"""Shared helpers of the model tests: a tiny CLIP and CLIP-style token ids."""
import math

import pytest
import torch
from helpers import BOS, EOT, MAX_WORD_ID, PAD, tiny_clip_config


@pytest.fixture(scope='session')
def make_clip_config():
    """``make_clip_config() -> dict``: a fresh copy of the tiny CLIP config
    (:data:`helpers.TINY_CLIP`)."""
    return tiny_clip_config


@pytest.fixture
def clip_config(make_clip_config) -> dict:
    """A fresh copy of the tiny CLIP config (tests may edit it)."""
    return make_clip_config()


@pytest.fixture(scope='session')
def special_tokens() -> dict:
    return dict(pad=PAD, bos=BOS, eot=EOT, max_word=MAX_WORD_ID)


def _make_token_ids(num_words: list[int], seq_len: int,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``[BOS, w_1..w_k, EOT, PAD...]`` with k = ``num_words[i]``.

    Returns ``(input_ids, attention_mask)``, the mask 1 up to and including
    the end token. Word ids are drawn from ``[1, MAX_WORD_ID]``.
    """
    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((len(num_words), seq_len), PAD, dtype=torch.long)
    for i, k in enumerate(num_words):
        assert k + 2 <= seq_len
        words = torch.randint(1, MAX_WORD_ID + 1, (k,), generator=gen)
        ids[i, 0] = BOS
        ids[i, 1:k + 1] = words
        ids[i, k + 1] = EOT
    return ids, (ids != PAD).long()


@pytest.fixture(scope='session')
def make_token_ids():
    """``make_token_ids(num_words, seq_len, seed=0) -> (ids, mask)``."""
    return _make_token_ids


def _infonce_reference(sim: torch.Tensor) -> float:
    """Symmetric InfoNCE by explicit loops in float64
    (docs/training.md#objective).

    Per row i: ``-(s_ii - logsumexp(row i))``; the same over columns; each
    direction averaged over its rows, then the two directions averaged.
    """
    s = sim.detach().double().tolist()
    n = len(s)

    def logsumexp(values: list[float]) -> float:
        top = max(values)
        return top + math.log(sum(math.exp(v - top) for v in values))

    t2v = sum(-(s[i][i] - logsumexp(s[i])) for i in range(n)) / n
    v2t = sum(-(s[j][j] - logsumexp([s[i][j] for i in range(n)]))
              for j in range(n)) / n
    return (t2v + v2t) / 2


@pytest.fixture(scope='session')
def infonce_reference():
    """``infonce_reference(sim) -> float``, the slow float64 loss."""
    return _infonce_reference
