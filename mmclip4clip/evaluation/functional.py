"""Exact retrieval ranks and metrics (docs/evaluation.md#ranks-and-metrics),
computed in blocks.

A rank is ``1 + the number of candidates scored strictly higher than the ground
truth``: ties do not push the ground truth down, and every query counts once,
so R@K always divides by the number of queries. Ranks are counted with a
comparison, never a sort, over blocks of caption rows, both directions in one
pass, so memory stays at ``block_size x candidates`` whatever the size of the
score matrix, which need not even exist: a :class:`~.scores.Scores` (e.g. the
loose heads' :class:`~.scores.EmbeddingScores`) computes each tile when it is
ranked, and a plain tensor is wrapped as one at the entry. A NaN or inf score
is an error that names the query, never a silently dropped row.
"""
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .scores import Scores, as_scores, check_matrix

# Default tile of the score matrix ranked at once, (caption rows, columns):
# cache-sized on the CPU; larger on a GPU, where every tile costs a few
# kernel launches.
TILE_SIZES = {'cpu': (1024, 1024), 'cuda': (4096, 8192)}


def _tile_size(device: torch.device) -> tuple[int, int]:
    return TILE_SIZES.get(device.type, TILE_SIZES['cpu'])


def _check_index(index: Tensor, name: str, length: int, high: int) -> None:
    """``index`` must be an integer vector of ``length`` values in [0, high)."""
    if index.dim() != 1 or index.numel() != length:
        raise ValueError(
            f'{name} must have shape [{length}], got {tuple(index.shape)}')
    if index.is_floating_point() or index.dtype == torch.bool:
        raise ValueError(f'{name} must be an integer tensor, got {index.dtype}')
    if length and (index.min() < 0 or index.max() >= high):
        raise ValueError(
            f'{name} has values in [{int(index.min())}, {int(index.max())}], '
            f'outside [0, {high})')


def _rows_per_block(scores: Scores, block_size: int | None) -> int:
    rows = block_size or _tile_size(scores.device)[0]
    if rows < 1:
        raise ValueError(f'block_size must be >= 1, got {block_size}')
    return rows


def _count_above(scores: Tensor, threshold: Tensor, dim: int) -> Tensor:
    """Number of scores strictly above ``threshold`` along ``dim`` (long).

    ``(x - t) > 0`` exactly when ``x > t`` for finite floats (a difference
    of two floats is zero only when they are equal); it is counted as an
    in-place float 0/1 mask, which torch sums faster on the CPU than a
    boolean mask.
    """
    return (scores - threshold).gt_(0).sum(dim=dim, dtype=torch.float32).long()


def _beaten(tile: Tensor, own: Tensor, segment: Tensor,
            num_segments: int) -> Tensor:
    """For each column j of ``tile`` (caption rows of ``num_segments``
    videos, row -> video ``segment``), how many of those videos have a
    caption scoring above ``own[j]``: [C] long."""
    if num_segments == tile.shape[0]:  # one caption per video
        return _count_above(tile, own[None], 0)
    hits = torch.zeros(num_segments, tile.shape[1], dtype=torch.int32,
                       device=tile.device)
    hits.index_add_(0, segment, (tile > own[None]).to(torch.int32))
    return (hits > 0).sum(dim=0)


def _t2v_ranks(scores: Scores, gt: Tensor, block_size: int | None
               ) -> Tensor:
    """Ranks of each row's ``gt`` column over whole rows, ``block_size``
    rows at a time (no video structure: see :func:`t2v_ranks`)."""
    num_texts, num_videos = scores.shape
    rows_per_block = _rows_per_block(scores, block_size)
    _check_index(gt, 'gt', num_texts, num_videos)
    scores.check_finite()
    device = scores.device
    gt = gt.to(device=device, dtype=torch.long)
    above_gt = torch.zeros(num_texts, dtype=torch.long, device=device)
    for start in range(0, num_texts, rows_per_block):
        rows = torch.arange(start, min(start + rows_per_block, num_texts),
                            device=device)
        block = scores.row_tiles(rows)(0, num_videos)  # [B, M]
        own = block[torch.arange(len(rows), device=device), gt[rows]]
        above_gt[rows] = _count_above(block, own[:, None], 1)
    return 1 + above_gt


def _both_ranks(scores: Scores, index: Tensor, block_size: int | None
                ) -> tuple[Tensor, Tensor]:
    """t2v and v2t ranks (see :func:`retrieval_ranks`).

    Caption rows are taken in blocks holding whole videos. Phase 1 computes
    each block's own columns (its videos), which give every caption's
    ground-truth score and every video's best own-caption score
    ``own[j] = max over j's captions of S[c, j]``; phase 2 computes the
    other columns in tiles and counts the scores above them. Every score is
    computed exactly once, so the ranks are exactly those of the matrix the
    tiles make up, and a tile never outgrows ``block_size`` x 1024 floats
    (8192 on a GPU).
    """
    num_texts, num_videos = scores.shape
    rows_per_block = _rows_per_block(scores, block_size)
    tile_columns = _tile_size(scores.device)[1]
    _check_index(index, 'text_video_index', num_texts, num_videos)
    scores.check_finite()
    device = scores.device
    index = index.to(device=device, dtype=torch.long)
    above_gt = torch.zeros(num_texts, dtype=torch.long, device=device)
    captions_per_video = torch.bincount(index, minlength=num_videos)
    if not bool((captions_per_video > 0).all()):
        video = int((captions_per_video == 0).nonzero()[0, 0])
        raise ValueError(f'video {video} has no caption in text_video_index')
    order = torch.sort(index, stable=True).indices  # captions by video
    sorted_index = index[order]
    # Block boundaries at video boundaries: the videos of a block are the
    # contiguous column range [first, last].
    bounds, start = [], 0
    while start < num_texts:
        stop = min(start + rows_per_block, num_texts)
        while stop < num_texts and sorted_index[stop] == sorted_index[stop - 1]:
            stop += 1
        bounds.append((start, stop))
        start = stop
    gt = torch.empty(num_texts, dtype=scores.dtype, device=device)
    own = torch.full((num_videos, ), float('-inf'), dtype=scores.dtype,
                     device=device)
    beaten = torch.zeros(num_videos, dtype=torch.long, device=device)
    segments = []
    for start, stop in bounds:  # phase 1: each block's own videos
        rows = order[start:stop]
        first, last = int(sorted_index[start]), int(sorted_index[stop - 1])
        _, per_video = torch.unique_consecutive(sorted_index[start:stop],
                                                return_counts=True)
        segment = torch.repeat_interleave(
            torch.arange(last - first + 1, device=device), per_video)
        segments.append(segment)
        tile = scores.row_tiles(rows)(first, last + 1)  # [B, V]
        block_gt = tile[torch.arange(len(rows), device=device),
                        index[rows] - first]
        gt[rows] = block_gt
        above_gt[rows] += _count_above(tile, block_gt[:, None], 1)
        own[first:last + 1] = block_gt.new_full(
            (last - first + 1, ), float('-inf')).scatter_reduce_(
                0, segment, block_gt, reduce='amax')
        # Video k outranks video query j when any caption of k scores above
        # own[j]; k = j never does.
        beaten[first:last + 1] += _beaten(tile, own[first:last + 1], segment,
                                          last - first + 1)
    for (start, stop), segment in zip(bounds, segments, strict=True):
        rows = order[start:stop]  # phase 2: all other columns, in tiles
        first, last = int(sorted_index[start]), int(sorted_index[stop - 1])
        block_gt = gt[rows, None]
        tiles = scores.row_tiles(rows)
        for lo, hi in _column_tiles(num_videos, first, last + 1,
                                    tile_columns):
            tile = tiles(lo, hi)  # [B, C]
            above_gt[rows] += _count_above(tile, block_gt, 1)
            beaten[lo:hi] += _beaten(tile, own[lo:hi], segment,
                                     last - first + 1)
    return 1 + above_gt, 1 + beaten


def _column_tiles(num_columns: int, skip_start: int, skip_stop: int,
                  width: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of at most ``width`` columns covering
    ``0..num_columns`` except ``skip_start..skip_stop``."""
    tiles = []
    for lo, hi in ((0, skip_start), (skip_stop, num_columns)):
        tiles += [(c, min(c + width, hi)) for c in range(lo, hi, width)]
    return tiles


def retrieval_ranks(scores: Tensor | Scores, text_video_index: Tensor,
                    block_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Text-to-video and video-to-text ranks in one pass over the scores.

    Args:
        scores: [N_text, M_video] float scores (rows = captions), a tensor or
            a :class:`~.scores.Scores` computed tile by tile.
        text_video_index: [N_text] column of each caption's video.
        block_size: caption rows compared at once (rounded up to whole
            videos), against at most 1024 columns at a time (8192 on a GPU);
            default 1024 (4096 on a GPU).

    Returns:
        t2v ranks [N_text] (``1 + #{j : S[i, j] > S[i, gt_i]}``) and v2t
        ranks [M_video] (``1 + #{k : V[j, k] > V[j, j]}`` with
        ``V[j, k] = max over captions c of video k of S[c, j]``), long.
    """
    return _both_ranks(as_scores(scores), text_video_index, block_size)


def t2v_ranks(scores: Tensor | Scores, gt: Tensor,
              block_size: int | None = None) -> Tensor:
    """Rank of each query's ground-truth candidate (1 = best).

    Args:
        scores: [N, M] float scores, rows = queries, columns = candidates.
        gt: [N] index of each query's ground-truth column.
        block_size: rows compared at once; memory is about block_size x M.

    Returns:
        [N] long ranks, ``1 + #{j : S[i, j] > S[i, gt[i]]}``.
    """
    return _t2v_ranks(as_scores(scores), gt, block_size)


def v2t_ranks(scores: Tensor | Scores, text_video_index: Tensor,
              block_size: int | None = None) -> Tensor:
    """Rank of each video's own captions among all videos (video-to-text).

    Several captions per video (MSVD protocol, as in CLIP4Clip): a candidate
    video ``k`` scores ``V[j, k] = max over captions c of video k of S[c, j]``
    for video query ``j``, and the ground truth is ``k = j``. Each video is
    listed once, so R@1 is not divided by the number of captions. With one
    caption per video this is plain ranking of ``S.T``. Computed over blocks
    of caption rows (:func:`retrieval_ranks`), never a transposed copy.

    Returns:
        [M_video] long ranks, ``1 + #{k : V[j, k] > V[j, j]}``.
    """
    return _both_ranks(as_scores(scores), text_video_index, block_size)[1]


def rank_metrics(ranks: Tensor) -> dict[str, float]:
    """R@1/5/10 (percent of queries with rank <= K), median and mean rank."""
    if ranks.numel() == 0:
        raise ValueError('rank_metrics got no ranks')
    values = ranks.detach().cpu().numpy().astype(np.float64).ravel()  # [N]
    metrics = {f'R{k}': float(100.0 * np.mean(values <= k)) for k in (1, 5, 10)}
    metrics['MdR'] = float(np.median(values))
    metrics['MnR'] = float(np.mean(values))
    return metrics


def dual_softmax(scores: Tensor, tau: float, dim: int) -> Tensor:
    """Dual-softmax inference (DSL, CAMoE): ``S * softmax(S * tau, dim)``.

    For a [N_text, M_video] matrix, text-to-video uses ``dim=0`` (normalise over
    the texts, the query axis) and video-to-text ``dim=1`` (over the videos).
    Normalising over the query axis uses every test query, so DSL assumes the
    whole query set is known at once, unlike one query at a time search.
    """
    weights = torch.softmax(scores * tau, dim=dim)  # [N, M]
    return weights.mul_(scores)


def querybank_norm(scores: Tensor, bank: Tensor, beta: float,
                   k: int = 1) -> Tensor:
    """QB-Norm with the dynamic inverted softmax (Bogolin et al., CVPR 2022).

    Hub gallery items (retrieved for many queries) are down-weighted by how
    strongly a bank of queries retrieves them. The activation set ``A`` is the
    union of every bank query's top-``k`` gallery items. A query row ``s``
    whose top-1 item is in ``A`` becomes the inverted softmax
    ``s'_j = exp(beta * s_j) / sum_b exp(beta * bank[b, j])``; any other row
    is kept as it is. Normalised rows are returned as ``log s'``
    (``beta * s_j - logsumexp_b(beta * bank[b, j])``): ranks within a row are
    the same, and logit-scale scores cannot overflow ``exp``.

    Args:
        scores: [N, M] query-by-gallery scores to normalise.
        bank: [Q, M] scores of the query bank against the same gallery.
        beta: inverse temperature of the inverted softmax.
        k: bank top-k that forms the activation set.

    Returns:
        [N, M] float scores, ranked row by row like ``scores``.
    """
    check_matrix(scores)
    check_matrix(bank)
    if bank.shape[1] != scores.shape[1]:
        raise ValueError(
            f'bank has {bank.shape[1]} gallery columns, scores has '
            f'{scores.shape[1]}')
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f'k must be in [1, {scores.shape[1]}], got {k}')
    bank = bank.to(scores.device)
    active = torch.zeros(scores.shape[1], dtype=torch.bool,
                         device=scores.device)  # [M]
    active[bank.topk(k, dim=1).indices.flatten()] = True
    normalise = active[scores.topk(1, dim=1).indices[:, 0]]  # [N]
    log_norm = torch.logsumexp(bank * beta, dim=0)  # [M]
    inverted = scores * beta - log_norm  # [N, M]
    return torch.where(normalise[:, None], inverted, scores)


def once_each(items: list, index: Callable[[Any], int]) -> list:
    """``items`` with each ``index(item)`` kept once (its first occurrence),
    in index order: the dataset samples of an evaluation, without the
    repeats a distributed sampler adds to even out the shards."""
    unique = {index(item): item for item in reversed(items)}
    return [unique[i] for i in sorted(unique)]
