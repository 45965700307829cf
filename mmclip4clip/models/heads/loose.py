"""Loose similarity heads: one vector per video, compared by a dot product.

A loose head applies its own transform ``G`` to the frame features and pools
them (docs/models.md#heads)::

    v = normalize(masked_mean(normalize(G(F)), M))

The heads keep mmaction2's adapter call signature, ``head(x) -> [B, D]`` for
``x`` of shape ``[B, T, D]``, with an optional frame mask, so they drop into
other mmaction2 pipelines. Bad input (a shape or an option that makes no
sense) raises ``ValueError`` where mmaction2's adapters, which leave it to
torch, raise ``RuntimeError``; catch ``ValueError`` when swapping them in.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mmclip4clip.evaluation.scores import EmbeddingScores
from mmclip4clip.models.losses import all_gather_with_grad
from mmclip4clip.registry import MODELS


def masked_mean(x: Tensor, mask: Tensor | None,
                dims: tuple[int, ...] = (1, )) -> Tensor:
    """Mean over the axes ``dims`` of the real frames' entries.

    ``x`` is [B, T, ..., D] and ``mask`` [B, T] (1 = real frame); ``dims``
    are non-negative and, with a mask, include the frame axis 1. For the
    default, [B, T, D] + [B, T] -> [B, D]. Every entry of a padded frame
    (along all other averaged axes too) is left out, so the result is the
    plain mean over the real frames' entries. A video with no real frame
    counts as one entry (its mean is zero), as in the original code.
    """
    if mask is None:
        return x.mean(dim=dims)
    # [B, T, 1, ..., 1]: one weight per frame, shared by its other entries.
    weights = mask.to(x.dtype).reshape(*mask.shape, *[1] * (x.ndim - 2))
    count = weights.expand(*x.shape[:-1], 1).sum(dim=dims)
    return (x * weights).sum(dim=dims) / count.clamp(min=1.0)


class EmbeddingHead(nn.Module):
    """A head that scores by embedding products: one unit vector per text
    and per video, ``scale * t @ v.T`` (the loose heads, mmaction2's
    adapters).

    The scoring interface every head gives the retriever (the tight head's
    is :class:`~mmclip4clip.models.heads.TightTransfHead`):
    :attr:`embeds_videos`, :meth:`embed_text`, :meth:`embed_video`,
    :meth:`scores` and :meth:`batch_scores`. Subclasses implement
    ``forward(frame_features, frame_mask) -> [B, D]`` unit vectors.
    """

    #: A video is one vector that can be stored and searched (an index).
    embeds_videos = True

    def embed_text(self, text: Tensor) -> Tensor:
        """[N, D] projected CLIP text features -> [N, D] unit vectors."""
        return F.normalize(text, dim=-1)

    def embed_video(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """[B, T, D] frame features + [B, T] mask -> [B, D] unit vectors."""
        return self(frames, frame_mask)

    def scores(self, text: Tensor, video: Tensor,
               video_mask: Tensor | None = None,
               scale: float | Tensor = 1.0) -> EmbeddingScores:
        """Texts x videos: ``scale * text @ video.T`` for [N, D] and [M, D]
        embeddings (``video_mask`` is not needed), computed tile by tile."""
        return EmbeddingScores(text, video, scale)

    def batch_scores(self, text: Tensor, video: Tensor,
                     video_mask: Tensor | None,
                     scale: float | Tensor) -> EmbeddingScores:
        """The scores the training loss runs over: this process's [B, D]
        embeddings gathered from all W processes (with their gradients),
        [W * B, W * B]."""
        return self.scores(all_gather_with_grad(text),
                           all_gather_with_grad(video), None, scale)


class LooseHead(EmbeddingHead):
    """Base of the loose heads: transform, normalise, masked mean, normalise.

    Subclasses implement :meth:`transform`, the head's ``G``.
    """

    def transform(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """[B, T, D] -> [B, T, D]."""
        raise NotImplementedError

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """[B, T, D] frame features (+ [B, T] mask) -> [B, D] unit vectors."""
        x = F.normalize(self.transform(x, mask), dim=-1)
        return F.normalize(masked_mean(x, mask), dim=-1)


def _frame_mean_axes(dim: int | tuple[int, ...] | list[int]
                     ) -> tuple[int, ...]:
    """``dim`` as a non-empty tuple of ints (bools refused)."""
    axes = (dim, ) if isinstance(dim, int) else dim
    if (not isinstance(axes, (tuple, list)) or not axes
            or any(isinstance(a, bool) or not isinstance(a, int)
                   for a in axes)):
        raise ValueError(f'MeanPHead: dim must be an int or a non-empty '
                         f'tuple of ints, got {dim!r}')
    return tuple(axes)


@MODELS.register_module()
class MeanPHead(LooseHead):
    """meanP: parameter-free mean pooling of the normalised frame features.

    ``v = normalize(masked_mean(normalize(x), mask, dim))``. Like mmaction2's
    ``SimpleMeanAdapter``, ``dim`` names the averaged axes, so features
    [B, T, K, D] (K vectors per frame) pool to [B, D] with ``dim=(1, 2)``;
    the result is ``x`` without the ``dim`` axes. Unlike the adapter, each
    vector is normalised first and the result again.

    The [B, T] frame mask marks real frames along axis 1: with several axes
    every entry of a padded frame is left out, i.e. the mean is over the
    real frames' entries. Refused (``ValueError``, where the adapter's torch
    call would raise ``RuntimeError`` or silently pool the wrong axes): the
    batch axis 0 or the feature axis (last; it is the normalised one), an
    axis out of range or named twice, and a mask whose frames are not
    averaged (``dim`` without axis 1) or whose shape is not x's [B, T].

    Args:
        dim: the averaged axis or axes (negative counts from the end, as in
            torch). Default 1, the frame axis.
    """

    def __init__(self, dim: int | tuple[int, ...] = 1) -> None:
        super().__init__()
        self.dim = _frame_mean_axes(dim)

    def transform(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return x

    def _axes_for(self, x: Tensor, mask: Tensor | None) -> tuple[int, ...]:
        """``self.dim`` resolved against ``x``, checked with ``mask``."""
        shape = list(x.shape)
        name = f'MeanPHead(dim={self.dim}) on x of shape {shape}'
        if any(not -x.ndim <= a < x.ndim for a in self.dim):
            raise ValueError(f'{name}: an axis is out of range')
        axes = tuple(a % x.ndim for a in self.dim)
        if len(set(axes)) != len(axes):
            raise ValueError(f'{name}: an axis is named twice')
        if 0 in axes:
            raise ValueError(f'{name}: axis 0 is the batch axis; the '
                             'averaged axes lie between batch and features')
        if x.ndim - 1 in axes:
            raise ValueError(f'{name}: axis {x.ndim - 1} is the feature axis '
                             '(each vector is normalised along it)')
        if mask is not None:
            if 1 not in axes:
                raise ValueError(f'{name}: a frame mask marks frames along '
                                 'axis 1, which is not averaged; pass no mask '
                                 'or include axis 1')
            if list(mask.shape) != shape[:2]:
                raise ValueError(f'{name}: the frame mask has shape '
                                 f'{list(mask.shape)}, expected {shape[:2]}')
        return tuple(sorted(axes))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """[B, T, ..., D] (+ [B, T] mask) -> unit vectors, ``x`` without the
        ``dim`` axes ([B, D] for the default on [B, T, D])."""
        axes = self._axes_for(x, mask)
        x = F.normalize(x, dim=-1)
        return F.normalize(masked_mean(x, mask, axes), dim=-1)
