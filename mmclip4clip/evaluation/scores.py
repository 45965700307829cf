"""Text x video score matrices that are computed tile by tile.

Every retrieval score matrix (rows = captions, columns = videos) is a
:class:`Scores`: it says its ``shape``, ``device`` and ``dtype``, computes
the tiles of a block of rows on demand (:meth:`Scores.row_tiles`, what the
ranker reads), the whole matrix only when asked (:meth:`Scores.full`), and
checks its values are finite, naming the caption, video or pair at fault.
How the scores are made is the head's business:

- :class:`EmbeddingScores`: the loose heads' ``scale * T @ V.T`` from unit
  text and video embeddings; at 100k x 100k the matrix would take 40 GB in
  float32, its tiles take a block of rows;
- :class:`PairScores`: the tight head's pair logits, one cross-encoder pass
  per (caption, video) pair of a tile;
- :class:`DenseScores`: a matrix already held, e.g. one a user passes to the
  metric (wrapped once, at the entry, by :func:`as_scores`).

The module depends on torch only, so models and evaluation both import it.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack

import torch
from torch import Tensor

#: ``(start, stop) -> scores[rows, start:stop]`` for one block of rows.
RowTiles = Callable[[int, int], Tensor]


class Scores:
    """A lazy [N_text, M_video] score matrix (see the module docstring).

    Args:
        shape: ``(N_text, M_video)``.
        like: a tensor whose device and dtype the scores have.
    """

    def __init__(self, shape: tuple[int, int], like: Tensor) -> None:
        self._shape = torch.Size(shape)
        self._like = like

    @property
    def shape(self) -> torch.Size:
        return self._shape

    @property
    def device(self) -> torch.device:
        return self._like.device

    @property
    def dtype(self) -> torch.dtype:
        return self._like.dtype

    def row_tiles(self, rows: Tensor) -> RowTiles:
        """Tiles of the rows ``rows`` ([B] long on :attr:`device`):
        ``(start, stop) -> [B, stop - start]``; whatever the rows share
        is prepared once for all their tiles."""
        raise NotImplementedError

    def full(self) -> Tensor:
        """The whole [N, M] matrix (N x M values of memory)."""
        raise NotImplementedError

    def check_finite(self) -> None:
        """Raise ValueError naming the first caption, video or pair whose
        score is NaN or inf, where it can be told without computing the
        tiles (a lazy kind checks each tile as it is computed too)."""
        raise NotImplementedError

    def rows(self, index: Tensor) -> Tensor:
        """Rows ``index`` of the matrix: [len(index), M]."""
        return self.row_tiles(index)(0, self.shape[1])

    def full_for_backward(self) -> tuple[Tensor, Callable[[Tensor], None]]:
        """The whole matrix as a leaf tensor, cut from the graph that made
        it, and a function that back-propagates a gradient of that matrix
        ([N, M]) through the scorer to its inputs and parameters.

        For gradient caching (``engine/grad_cache.py``): the loss's gradient
        w.r.t. the scores is taken first, the scorer's backward later. Here
        the graph of :meth:`full` is kept until then; :class:`PairScores`
        instead recomputes it one block of rows at a time.
        """
        values = self.full()
        leaf = values.detach().requires_grad_(values.requires_grad)

        def backward(grad: Tensor) -> None:
            if values.requires_grad:
                values.backward(grad)

        return leaf, backward


def check_matrix(scores: Tensor) -> None:
    """Raise ValueError unless ``scores`` is a 2-d float tensor."""
    if scores.dim() != 2:
        raise ValueError(
            f'scores must be a 2-d [N_text, M_video] tensor, got shape '
            f'{tuple(scores.shape)}')
    if not scores.is_floating_point():
        raise ValueError(f'scores must be a float tensor, got {scores.dtype}')


def _torch_rng_state(device: torch.device) -> tuple:
    """torch's CPU generator state and, on CUDA, the device's."""
    cuda = torch.cuda.get_rng_state(device) if device.type == 'cuda' else None
    return torch.get_rng_state(), cuda


def _set_torch_rng_state(state: tuple, device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _first_bad_row(values: Tensor) -> int | None:
    """Index of the first row of ``values`` [K, ...] holding a NaN/inf."""
    bad = ~torch.isfinite(values.flatten(1)).all(dim=1)
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


class EmbeddingScores(Scores):
    """The [N, M] matrix ``scale * text @ video.T``, computed on demand.

    The scale multiplies the text embeddings once (``(scale * text) @
    video.T``), so an entry is one dot product and no pass over the scores
    is spent on scaling. A tensor ``scale`` stays in the autograd graph (the
    training loss learns CLIP's ``logit_scale`` through it).

    Args:
        text: [N, D] text embeddings (rows of the matrix).
        video: [M, D] video embeddings (columns), on the same device.
        scale: multiplier of the dot products (the model's
            ``logit_scale.exp()``); ranks do not depend on it, DSL does.
    """

    def __init__(self, text: Tensor, video: Tensor,
                 scale: float | Tensor = 1.0) -> None:
        if text.dim() != 2 or video.dim() != 2 or text.shape[1] != video.shape[1]:
            raise ValueError(
                'EmbeddingScores needs [N, D] text and [M, D] video '
                f'embeddings, got {tuple(text.shape)} and {tuple(video.shape)}')
        if not isinstance(scale, Tensor):
            scale = float(scale)
        self.text = text * scale  # [N, D], scaled once
        self.video = video
        super().__init__((text.shape[0], video.shape[0]), self.text)

    def row_tiles(self, rows: Tensor) -> RowTiles:
        text = self.text[rows]  # [B, D], gathered once for all tiles
        return lambda start, stop: text @ self.video[start:stop].T

    def full(self) -> Tensor:
        return self.text @ self.video.T

    def check_finite(self) -> None:
        for name, emb in (('caption', self.text), ('video', self.video)):
            i = _first_bad_row(emb)
            if i is not None:
                raise ValueError(f'{name} embedding {i} contains NaN/inf, so '
                                 f'its scores (query {i}) would too')


class DenseScores(Scores):
    """A score matrix held in memory, as a :class:`Scores`.

    Args:
        matrix: [N, M] float scores, rows = captions.
    """

    def __init__(self, matrix: Tensor) -> None:
        check_matrix(matrix)
        self.matrix = matrix
        super().__init__(matrix.shape, matrix)

    def row_tiles(self, rows: Tensor) -> RowTiles:
        return lambda start, stop: self.matrix[:, start:stop][rows]

    def full(self) -> Tensor:
        return self.matrix

    def check_finite(self) -> None:
        step = 1024  # rows at a time: bounded memory
        for start in range(0, self.shape[0], step):
            bad = ~torch.isfinite(self.matrix[start:start + step])
            if bool(bad.any()):
                row, col = bad.nonzero()[0].tolist()
                row += start
                raise ValueError(
                    f'score matrix row {row} (query {row}), column {col} '
                    f'(video query {col}) contains NaN/inf')


#: ``(text [B, D], frames [C, T, D], frame_mask [C, T]) -> [B, C]`` logits.
PairLogits = Callable[[Tensor, Tensor, Tensor], Tensor]


class PairScores(Scores):
    """Logits of every (caption, video) pair from a pair scorer (the tight
    head's cross-encoder), computed tile by tile.

    A tile runs under the grad mode and autocast settings of the moment the
    object was made (e.g. the evaluation loop's ``no_grad`` and fp16), so a
    later caller (the metric) computes the same numbers. Tiles are returned
    in the dtype of ``text``; each is checked to be finite as it is
    computed (a NaN/inf names its caption and video).

    Args:
        pair_logits: the scorer (the head's ``pair_logits``).
        text: [N, D] text features.
        frames: [M, T, D] frame features of the videos.
        frame_mask: [M, T] their masks (1 = real frame).
        pairs_per_pass: how many pairs ``pair_logits`` runs through the
            cross-encoder at once (its chunk), or None when unknown; blocks
            of rows of :meth:`full_for_backward` are whole chunks, so they
            draw the random numbers (dropout) of one :meth:`full`.
    """

    def __init__(self, pair_logits: PairLogits, text: Tensor, frames: Tensor,
                 frame_mask: Tensor, pairs_per_pass: int | None = None
                 ) -> None:
        if (text.dim() != 2 or frames.dim() != 3
                or frames.shape[-1] != text.shape[-1]
                or tuple(frame_mask.shape) != tuple(frames.shape[:2])):
            raise ValueError(
                'PairScores needs [N, D] text, [M, T, D] frame features and '
                f'an [M, T] frame mask, got {tuple(text.shape)}, '
                f'{tuple(frames.shape)} and {tuple(frame_mask.shape)}')
        self.pair_logits = pair_logits
        self.text, self.frames, self.frame_mask = text, frames, frame_mask
        self.pairs_per_pass = pairs_per_pass
        super().__init__((text.shape[0], frames.shape[0]), text)
        self._grad = torch.is_grad_enabled()
        kind = text.device.type
        self._autocast = (kind, torch.get_autocast_dtype(kind)) \
            if torch.is_autocast_enabled(kind) else None

    def _logits(self, text: Tensor, start: int, stop: int,
                grad: bool | None = None) -> Tensor:
        """Logits of ``text`` x videos ``start:stop`` under the grad mode
        (``grad`` overrides it) and autocast of the object's creation."""
        grad = self._grad if grad is None else grad
        with ExitStack() as stack:
            if torch.is_grad_enabled() != grad:
                stack.enter_context(torch.set_grad_enabled(grad))
            kind = self.device.type
            now = (kind, torch.get_autocast_dtype(kind)) \
                if torch.is_autocast_enabled(kind) else None
            if now != self._autocast:
                stack.enter_context(
                    torch.autocast(kind, enabled=False) if self._autocast is None
                    else torch.autocast(kind, self._autocast[1]))
            return self.pair_logits(text, self.frames[start:stop],
                                    self.frame_mask[start:stop]).to(self.dtype)

    def row_tiles(self, rows: Tensor) -> RowTiles:
        text = self.text[rows]  # [B, D]

        def tile(start: int, stop: int) -> Tensor:
            logits = self._logits(text, start, stop)  # [B, stop - start]
            bad = ~torch.isfinite(logits)
            if bool(bad.any()):
                row, col = bad.nonzero()[0].tolist()
                raise ValueError(
                    f'the pair logit of caption {int(rows[row])} and video '
                    f'{start + col} is NaN/inf')
            return logits

        return tile

    def full(self) -> Tensor:
        return self._logits(self.text, 0, self.shape[1])

    def _block_rows(self) -> int:
        """Rows per block of :meth:`full_for_backward`: the fewest whose
        pairs are whole chunks of ``pairs_per_pass`` (all rows when that is
        unknown or takes more)."""
        n, m = self.shape
        if not self.pairs_per_pass or m == 0:
            return max(n, 1)
        rows = self.pairs_per_pass // math.gcd(self.pairs_per_pass, m)
        return max(1, min(n, rows))

    def full_for_backward(self) -> tuple[Tensor, Callable[[Tensor], None]]:
        """:meth:`Scores.full_for_backward`, holding one block of rows'
        activations at a time instead of all N x M pairs'.

        The matrix is computed block by block without a graph, the random
        state saved before each block; the backward function computes each
        block again from its saved state (same dropout masks) and
        back-propagates its rows of the gradient, then leaves the random
        state where the first pass left it. The blocks are whole chunks of
        the scorer, so the masks are those of one :meth:`full` call, and so
        are the gradients (up to the order of floating-point additions).
        """
        if not self._grad:
            return super().full_for_backward()
        n, m = self.shape
        step = self._block_rows()
        starts = range(0, n, step)
        states, blocks = [], []
        for start in starts:
            states.append(_torch_rng_state(self.device))
            blocks.append(self._logits(self.text[start:start + step], 0, m,
                                       grad=False))
        after = _torch_rng_state(self.device)
        leaf = (torch.cat(blocks) if blocks else
                self.text.new_zeros(n, m)).requires_grad_()

        def backward(grad: Tensor) -> None:
            for start, state in zip(starts, states, strict=True):
                _set_torch_rng_state(state, self.device)
                block = self._logits(self.text[start:start + step], 0, m)
                if block.requires_grad:
                    block.backward(grad[start:start + step])
            _set_torch_rng_state(after, self.device)

        return leaf, backward

    def check_finite(self) -> None:
        for name, values in (('caption', self.text), ('video', self.frames)):
            i = _first_bad_row(values)
            if i is not None:
                raise ValueError(f'{name} features {i} contain NaN/inf, so '
                                 f'its pair logits (query {i}) would too')


def as_scores(scores: Tensor | Scores) -> Scores:
    """``scores`` as a :class:`Scores`; a tensor is wrapped (and checked to
    be a 2-d float matrix) as :class:`DenseScores`."""
    if isinstance(scores, Scores):
        return scores
    if not isinstance(scores, Tensor):
        raise ValueError('scores must be a 2-d float Tensor [N_text, '
                         f'M_video] or a Scores, got {type(scores)}')
    return DenseScores(scores)
