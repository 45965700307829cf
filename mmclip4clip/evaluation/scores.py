"""Score matrices that are computed block by block instead of held whole.

A loose head's score matrix is ``scale * T @ V.T`` for unit text and video
embeddings. At 100k captions x 100k videos it would take 40 GB in float32,
so the retrieval metric ranks it from the embeddings, a block of rows at a
time: :class:`EmbeddingScores` stands in for the matrix wherever a score
tensor is accepted (``shape``, ``rows``, ``full``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class EmbeddingScores:
    """The [N, M] matrix ``scale * text @ video.T``, computed on demand.

    The scale multiplies the text embeddings once, as the model's
    ``similarity`` does (``(scale * text) @ video.T``), so an entry is one
    dot product and no pass over the scores is spent on scaling.

    Args:
        text: [N, D] text embeddings (rows of the matrix).
        video: [M, D] video embeddings (columns), on the same device.
        scale: multiplier of the dot products (the model's
            ``logit_scale.exp()``); ranks do not depend on it, DSL does.
    """

    def __init__(self, text: Tensor, video: Tensor, scale: float = 1.0) -> None:
        if text.dim() != 2 or video.dim() != 2 or text.shape[1] != video.shape[1]:
            raise ValueError(
                'EmbeddingScores needs [N, D] text and [M, D] video '
                f'embeddings, got {tuple(text.shape)} and {tuple(video.shape)}')
        self.text = text * float(scale)  # [N, D], scaled once
        self.video = video

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.text.shape[0], self.video.shape[0]))

    @property
    def dtype(self) -> torch.dtype:
        return self.text.dtype

    @property
    def device(self) -> torch.device:
        return self.text.device

    def dim(self) -> int:
        return 2

    def is_floating_point(self) -> bool:
        return self.text.is_floating_point()

    def rows(self, index: Tensor) -> Tensor:
        """Rows ``index`` of the matrix: [len(index), M]."""
        return self.text[index] @ self.video.T

    def tile(self, rows: Tensor, start: int, stop: int) -> Tensor:
        """Rows ``rows`` and columns ``start:stop``: [len(rows), stop - start]."""
        return self.text[rows] @ self.video[start:stop].T

    def full(self) -> Tensor:
        """The whole [N, M] matrix (N x M floats of memory)."""
        return self.rows(torch.arange(self.shape[0], device=self.device))


def score_tile(scores: Tensor | EmbeddingScores, rows: Tensor, start: int,
               stop: int) -> Tensor:
    """Rows ``rows``, columns ``start:stop`` of a score tensor or
    :class:`EmbeddingScores`."""
    return row_tiles(scores, rows)(start, stop)


def row_tiles(scores: Tensor | EmbeddingScores,
              rows: Tensor) -> Callable[[int, int], Tensor]:
    """``(start, stop) -> scores[rows, start:stop]`` for one block of rows;
    the rows' text embeddings are gathered once for all its tiles."""
    if isinstance(scores, EmbeddingScores):
        text = scores.text[rows]  # [B, D]
        return lambda start, stop: text @ scores.video[start:stop].T
    return lambda start, stop: scores[:, start:stop][rows]


def full_scores(scores: Tensor | EmbeddingScores) -> Tensor:
    """The whole matrix as a tensor (materialised for EmbeddingScores)."""
    if isinstance(scores, EmbeddingScores):
        return scores.full()
    return scores
