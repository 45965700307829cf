"""tightTransf: CLIP4Clip's cross-encoder head (docs/models.md#tight-head).

Unlike the loose heads there is no per-video vector: every (text, video) pair
runs through the cross transformer, so scoring N texts against M videos costs
N * M passes. :meth:`TightTransfHead.pair_logits` does them in chunks of
``chunk_size`` pairs, so peak memory is set by the chunk, not by N * M.

Input that does not fit (1 + T tokens past the position table, a bad
``chunk_size``) is a ``ValueError``, where mmaction2's adapters leave shape
errors to torch (``RuntimeError``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from mmclip4clip.evaluation.scores import PairScores
from mmclip4clip.registry import MODELS

from .clip_text_tower import clip_text_tower
from .cross_blocks import (
    CROSS_LN_EPS,
    CrossTransformer,
    init_new_module,
    load_position_rows,
)

#: ``(text index [P], video index [P]) -> [P]`` logits of those pairs.
PairLogitsFn = Callable[[Tensor, Tensor], Tensor]


@MODELS.register_module()
class TightTransfHead(nn.Module):
    """Cross-encoder over ``[t_eot ; F_1 .. F_T]`` giving one logit per pair.

    The text feature and the T frame features (projected CLIP features, not
    normalised) form a sequence of 1 + T tokens; a learned position embedding
    is added, then dropout, ``num_layers`` blocks with a -1e6 key mask on
    padded frames, and a pooler (LayerNorm, token 0, Linear, QuickGELU) and a
    Linear(D, 1) give the logit. No ``logit_scale``. As in the original there
    is no token-type embedding and no embedding LayerNorm.

    Args:
        embed_dim: D, the CLIP embedding width.
        num_layers: ``n_cross`` blocks (4 in the paper).
        num_heads: attention heads; default D / 64 as in CLIP's text tower.
        max_positions: rows of the position table (CLIP's context length in
            the original, 77); bounds 1 + T.
        dropout: dropout after adding positions (0.1 in the original).
        chunk_size: pairs per cross-encoder pass when scoring N x M pairs;
            sets the peak memory of evaluation. Default: 128 on the CPU
            (small enough for the activations to stay in cache) and
            2048 on a GPU.
        with_cp: activation checkpointing of each cross block in training
            (see :mod:`mmclip4clip.models.activation_checkpoint`): every
            chunk of pairs keeps its blocks' inputs instead of their inner
            activations; logits and gradients are unchanged.
    """

    #: A video is kept as its frame features: its scores come from pairs.
    embeds_videos = False

    def __init__(self, embed_dim: int, num_layers: int = 4,
                 num_heads: int | None = None,
                 max_positions: int = 77, dropout: float = 0.1,
                 chunk_size: int | None = None, with_cp: bool = False) -> None:
        super().__init__()
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
        self.chunk_size = chunk_size
        self.position_embeddings = nn.Embedding(max_positions, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.transformer = CrossTransformer(embed_dim, num_layers, num_heads,
                                            with_cp=with_cp)
        self.pooler_ln = nn.LayerNorm(embed_dim, eps=CROSS_LN_EPS)
        self.pooler_dense = nn.Linear(embed_dim, embed_dim)
        from transformers.activations import QuickGELUActivation
        self.pooler_act = QuickGELUActivation()
        self.classifier = nn.Linear(embed_dim, 1)
        init_new_module(self)

    def init_from_clip(self, clip: nn.Module) -> None:
        """As :meth:`SeqTransfHead.init_from_clip`: the pair sequence's
        position rows and the cross blocks from CLIP's text tower."""
        tower = clip_text_tower(clip)
        load_position_rows(self.position_embeddings, tower)
        self.transformer.load_clip_text_blocks(tower)

    def embed_text(self, text: Tensor) -> Tensor:
        """[N, D] projected CLIP text features, kept as they are (the
        cross-encoder reads them unnormalised)."""
        return text

    def embed_video(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """[B, T, D] frame features, kept as they are (with their mask,
        they are the video's input to every pair)."""
        return frames

    def scores(self, text: Tensor, frames: Tensor,
               frame_mask: Tensor | None = None,
               scale: float | Tensor | None = None) -> PairScores:
        """Texts x videos: the pair logits (:meth:`pair_logits`) of [N, D]
        texts and [M, T, D] frame features with their [M, T] mask,
        computed tile by tile. ``scale`` is unused: the head has no
        ``logit_scale``."""
        if frame_mask is None:
            raise ValueError('the tight head needs the videos\' frame mask')
        return PairScores(self.pair_logits, text, frames, frame_mask,
                          pairs_per_pass=self.pairs_per_pass(text.device))

    def batch_scores(self, text: Tensor, frames: Tensor, frame_mask: Tensor,
                     scale: float | Tensor | None = None) -> PairScores:
        """The scores the training loss runs over: this process's B x B
        in-batch pairs, as in the original (not gathered: the pairs of
        other processes would cost W^2 times the cross-encoder passes)."""
        return self.scores(text, frames, frame_mask)

    def pairs_per_pass(self, device: torch.device) -> int:
        """Pairs per cross-encoder pass: ``chunk_size``, else 128 on the
        CPU and 2048 on other devices."""
        return self.chunk_size or (128 if device.type == 'cpu' else 2048)

    def _check_length(self, num_frames: int) -> None:
        """1 + T tokens must fit the position table."""
        rows = self.position_embeddings.num_embeddings
        if 1 + num_frames > rows:
            raise ValueError(f'1 + {num_frames} tokens but the position '
                             f'table has {rows} rows')

    def forward(self, text: Tensor, frames: Tensor,
                frame_mask: Tensor) -> Tensor:
        """Logits of aligned pairs: [P, D] texts, [P, T, D] frames and
        [P, T] mask -> [P]."""
        self._check_length(frames.shape[1])
        seq = torch.cat([text[:, None], frames], dim=1)  # [P, 1 + T, D]
        seq = self.dropout(seq + self.position_embeddings.weight[:seq.shape[1]])
        hidden = self.transformer(seq, _pair_mask(frame_mask))  # [P, 1 + T, D]
        return self._classify(hidden[:, 0])

    def _classify(self, token0: Tensor) -> Tensor:
        """The pooler and classifier on token 0's output: [P, D] -> [P]."""
        pooled = self.pooler_act(self.pooler_dense(self.pooler_ln(token0)))
        return self.classifier(pooled).squeeze(-1)

    def pair_logits(self, text: Tensor, frames: Tensor, frame_mask: Tensor,
                    chunk_size: int | None = None) -> Tensor:
        """Every text against every video: [N, D], [M, T, D], [M, T] ->
        [N, M], ``chunk_size`` pairs (default: the configured one) per pass.

        In training (dropout active) each pair runs :meth:`forward`. In
        evaluation the same blocks compute the same function with less
        work (options of :class:`CrossTransformer`, not a second copy of
        it): the first block's LayerNorm and q/k/v projections are computed
        once per text and once per video, not once per pair, and the last
        block computes only token 0, the only one the pooler reads (about
        3/4 of the per-pair products at 12 frames and 4 blocks).
        """
        chunk = chunk_size or self.pairs_per_pass(text.device)
        n, m = text.shape[0], frames.shape[0]
        if self.training:
            def logits(t_idx: Tensor, v_idx: Tensor) -> Tensor:
                return self(text[t_idx], frames[v_idx], frame_mask[v_idx])
        else:
            logits = self._evaluation_pairs(text, frames, frame_mask)
        out = text.new_empty(n * m)
        for start in range(0, n * m, chunk):
            pairs = torch.arange(start, min(start + chunk, n * m),
                                 device=text.device)
            out[start:start + len(pairs)] = logits(pairs // m, pairs % m)
        return out.view(n, m)

    def _evaluation_pairs(self, text: Tensor, frames: Tensor,
                          frame_mask: Tensor) -> PairLogitsFn:
        """:meth:`forward` without dropout, for pairs of [N, D] ``text`` and
        [M, T, D] ``frames`` (with their [M, T] mask): ``(t_idx, v_idx) ->
        [P]`` logits. The first block's inputs and q/k/v of every text
        ([N, ...]) and every video's frames ([M, T, ...]) are computed once
        here; the last block computes token 0 only."""
        self._check_length(frames.shape[1])
        pos = self.position_embeddings.weight[:1 + frames.shape[1]]
        text_x = text + pos[0]  # [N, D]
        frame_x = frames + pos[1:]  # [M, T, D]
        text_qkv = self.transformer.first_block_qkv(text_x)  # [N, 3D]
        frame_qkv = self.transformer.first_block_qkv(frame_x)  # [M, T, 3D]

        def logits(t_idx: Tensor, v_idx: Tensor) -> Tensor:
            x = torch.cat([text_x[t_idx, None], frame_x[v_idx]], dim=1)
            qkv = torch.cat([text_qkv[t_idx, None], frame_qkv[v_idx]], dim=1)
            token0 = self.transformer(x, _pair_mask(frame_mask[v_idx]),
                                      first_qkv=qkv,
                                      first_token_only=True)  # [P, 1, D]
            return self._classify(token0[:, 0])

        return logits


def _pair_mask(frame_mask: Tensor) -> Tensor:
    """[P, T] frame mask -> [P, 1 + T] token mask (the text token is real)."""
    return torch.cat([frame_mask.new_ones(frame_mask.shape[0], 1),
                      frame_mask], dim=1)
