"""Loose similarity heads: one vector per video, compared by a dot product.

A loose head applies its own transform ``G`` to the frame features and pools
them (spec section 2)::

    v = normalize(masked_mean(normalize(G(F)), M))

The heads keep mmaction2's adapter call signature, ``head(x) -> [B, D]`` for
``x`` of shape ``[B, T, D]``, with an optional frame mask, so they drop into
other mmaction2 pipelines.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mmclip4clip.registry import MODELS


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the frame axis of real frames: [B, T, D] + [B, T] -> [B, D].

    A video with no real frame counts as one frame (its mean is zero), as in
    the original code.
    """
    if mask is None:
        return x.mean(dim=1)
    mask = mask.to(x.dtype).unsqueeze(-1)  # [B, T, 1]
    return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class LooseHead(nn.Module):
    """Base of the loose heads: transform, normalise, masked mean, normalise.

    Subclasses implement :meth:`transform`, the head's ``G``.
    """

    #: Scores are dot products of per-text and per-video embeddings.
    pairwise = False

    def transform(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """[B, T, D] -> [B, T, D]."""
        raise NotImplementedError

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """[B, T, D] frame features (+ [B, T] mask) -> [B, D] unit vectors."""
        x = F.normalize(self.transform(x, mask), dim=-1)
        return F.normalize(masked_mean(x, mask), dim=-1)


@MODELS.register_module()
class MeanPHead(LooseHead):
    """meanP: parameter-free mean pooling of the normalised frame features."""

    def transform(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return x
