"""mmaction2's CLIP4Clip adapters, kept with their own arithmetic.

mmaction2's port computes video vectors differently from the original heads
(docs/models.md#mmaction2s-adapter-heads): it averages the UNnormalised frame
features, normalises only the average, and ignores any frame mask; its
TransformerAdapter adds a position table of exactly ``num_segs`` rows, runs
CLIP-style blocks (LayerNorm eps 1e-5) without a mask, adds its input back and
averages. A checkpoint converted from mmaction2 uses these heads so it
reproduces mmaction2's scores. mmaction2 always samples ``num_segs`` real
frames; with padded frames (which our pipelines may produce) these heads
average them in as mmaction2 would, so use them with full-length clips. A frame
count other than ``num_segs`` is a ``ValueError`` here, a ``RuntimeError``
(from torch) in mmaction2.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmclip4clip.registry import MODELS

from .cross_blocks import CrossTransformer
from .loose import EmbeddingHead

CLIP_LN_EPS = 1e-5


@MODELS.register_module()
class MMAction2MeanHead(EmbeddingHead):
    """mmaction2's SimpleMeanAdapter + normalisation:
    ``v = normalize(mean_t F_t)``, mask ignored."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """[B, T, D] (mask ignored) -> [B, D] unit vectors."""
        return F.normalize(x.mean(dim=1), dim=-1)


@MODELS.register_module()
class MMAction2TransformerHead(EmbeddingHead):
    """mmaction2's TransformerAdapter + normalisation:
    ``v = normalize(mean_t(blocks(F + P) + F))``, mask ignored.

    Args:
        num_segs: frames per video, the rows of the position table.
        embed_dim: D.
        num_layers: transformer blocks.
        num_heads: attention heads (default D / 64).
        with_cp: activation checkpointing of each block in training (see
            :mod:`mmclip4clip.models.activation_checkpoint`).
    """

    def __init__(self, num_segs: int, embed_dim: int, num_layers: int,
                 num_heads: int | None = None, with_cp: bool = False) -> None:
        super().__init__()
        # mmaction2 leaves the table to the checkpoint; N(0, 0.02) here.
        self.positional_embedding = nn.Parameter(
            torch.randn(num_segs, embed_dim) * 0.02)
        self.transformer = CrossTransformer(embed_dim, num_layers, num_heads,
                                            eps=CLIP_LN_EPS, with_cp=with_cp)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """[B, num_segs, D] (mask ignored) -> [B, D] unit vectors."""
        if x.shape[1] != self.positional_embedding.shape[0]:
            raise ValueError(
                f'{x.shape[1]} frames, but this mmaction2 adapter was trained '
                f'with num_segs={self.positional_embedding.shape[0]}')
        h = self.transformer(x + self.positional_embedding) + x
        return F.normalize(h.mean(dim=1), dim=-1)

