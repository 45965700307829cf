"""Exact retrieval ranks and metrics (spec section 7), computed in blocks.

A rank is ``1 + the number of candidates scored strictly higher than the ground
truth``: ties do not push the ground truth down, and every query counts once,
so R@K always divides by the number of queries. Ranks are counted with a
comparison, never a sort, over blocks of queries, so memory stays at
``block_size x candidates`` whatever the size of the score matrix. A NaN or inf
score is an error that names the query, never a silently dropped row.
"""
import numpy as np
import torch
from torch import Tensor


def _check_block_size(block_size: int) -> None:
    if block_size < 1:
        raise ValueError(f'block_size must be >= 1, got {block_size}')


def _check_scores(scores: Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(
            f'scores must be a 2-d [N_text, M_video] tensor, got shape '
            f'{tuple(scores.shape)}')
    if not scores.is_floating_point():
        raise ValueError(f'scores must be a float tensor, got {scores.dtype}')


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


def t2v_ranks(scores: Tensor, gt: Tensor, block_size: int = 4096) -> Tensor:
    """Rank of each query's ground-truth candidate (1 = best).

    Args:
        scores: [N, M] float scores, rows = queries, columns = candidates.
        gt: [N] index of each query's ground-truth column.
        block_size: rows compared at once; memory is about block_size x M.

    Returns:
        [N] long ranks, ``1 + #{j : S[i, j] > S[i, gt[i]]}``.
    """
    _check_scores(scores)
    _check_block_size(block_size)
    num_queries, num_candidates = scores.shape
    _check_index(gt, 'gt', num_queries, num_candidates)
    gt = gt.to(device=scores.device, dtype=torch.long)
    ranks = torch.empty(num_queries, dtype=torch.long, device=scores.device)
    for start in range(0, num_queries, block_size):
        stop = min(start + block_size, num_queries)
        block = scores[start:stop]  # [B, M]
        finite = torch.isfinite(block).all(dim=1)  # [B]
        if not bool(finite.all()):
            row = start + int((~finite).nonzero()[0, 0])
            raise ValueError(
                f'score matrix row {row} (query {row}) contains NaN/inf')
        rows = torch.arange(stop - start, device=scores.device)
        gt_scores = block[rows, gt[start:stop]]  # [B]
        ranks[start:stop] = 1 + (block > gt_scores[:, None]).sum(dim=1)
    return ranks


def v2t_ranks(scores: Tensor, text_video_index: Tensor,
              block_size: int = 4096) -> Tensor:
    """Rank of each video's own captions among all videos (video-to-text).

    Several captions per video (MSVD protocol, as in CLIP4Clip): a candidate
    video ``k`` scores ``V[j, k] = max over captions c of video k of S[c, j]``
    for video query ``j``, and the ground truth is ``k = j``. Each video is
    listed once, so R@1 is not divided by the number of captions. With one
    caption per video this is plain ranking of ``S.T``.

    Args:
        scores: [N_text, M_video] float scores, rows = captions.
        text_video_index: [N_text] column of each caption's video.
        block_size: video queries handled at once; memory is about
            block_size x (N_text + M_video).

    Returns:
        [M_video] long ranks, ``1 + #{k : V[j, k] > V[j, j]}``.
    """
    _check_scores(scores)
    _check_block_size(block_size)
    num_texts, num_videos = scores.shape
    _check_index(text_video_index, 'text_video_index', num_texts, num_videos)
    index = text_video_index.to(device=scores.device, dtype=torch.long)
    captions_per_video = torch.bincount(index, minlength=num_videos)  # [M]
    if not bool((captions_per_video > 0).all()):
        video = int((captions_per_video == 0).nonzero()[0, 0])
        raise ValueError(f'video {video} has no caption in text_video_index')
    ranks = torch.empty(num_videos, dtype=torch.long, device=scores.device)
    for start in range(0, num_videos, block_size):
        stop = min(start + block_size, num_videos)
        block = scores[:, start:stop]  # [N, B], column j = video query j
        finite = torch.isfinite(block).all(dim=0)  # [B]
        if not bool(finite.all()):
            col = start + int((~finite).nonzero()[0, 0])
            raise ValueError(
                f'score matrix column {col} (video query {col}) contains NaN/inf')
        # Best caption of each candidate video: [N, B] -> [M, B]; -inf is the
        # identity of max and every video has a caption, so no -inf survives.
        best = block.new_full((num_videos, stop - start), float('-inf'))
        best.scatter_reduce_(
            0, index[:, None].expand_as(block), block, reduce='amax')
        video_scores = best.T  # [B, M], V[j, k]
        queries = torch.arange(start, stop, device=scores.device)
        gt_scores = video_scores[queries - start, queries]  # [B]
        ranks[start:stop] = 1 + (video_scores > gt_scores[:, None]).sum(dim=1)
    return ranks


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
    _check_scores(scores)
    _check_scores(bank)
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
