"""tightTransf: CLIP4Clip's cross-encoder head (spec section 2).

Unlike the loose heads there is no per-video vector: every (text, video) pair
runs through the cross transformer, so scoring N texts against M videos costs
N * M passes. :meth:`TightTransfHead.pair_logits` does them in chunks of
``chunk_size`` pairs, so peak memory is set by the chunk, not by N * M.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mmclip4clip.registry import MODELS

from .cross_blocks import (
    CROSS_LN_EPS,
    CrossTransformer,
    QuickGELU,
    init_new_module,
    load_position_rows,
)


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
            sets the peak memory of evaluation.
    """

    #: Scores come from pairs, not from a dot product of two embeddings.
    pairwise = True

    def __init__(self, embed_dim: int, num_layers: int = 4,
                 num_heads: int | None = None,
                 max_positions: int = 77, dropout: float = 0.1,
                 chunk_size: int = 1024) -> None:
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
        self.chunk_size = chunk_size
        self.position_embeddings = nn.Embedding(max_positions, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.transformer = CrossTransformer(embed_dim, num_layers, num_heads)
        self.pooler_ln = nn.LayerNorm(embed_dim, eps=CROSS_LN_EPS)
        self.pooler_dense = nn.Linear(embed_dim, embed_dim)
        self.pooler_act = QuickGELU()
        self.classifier = nn.Linear(embed_dim, 1)
        init_new_module(self)

    def init_from_clip(self, clip: nn.Module) -> None:
        """Position rows and blocks from CLIP's text tower (spec section 2)."""
        load_position_rows(self.position_embeddings, clip.text_model)
        self.transformer.load_hf_clip_text_layers(clip.text_model)

    def forward(self, text: Tensor, frames: Tensor,
                frame_mask: Tensor) -> Tensor:
        """Logits of aligned pairs: [P, D] texts, [P, T, D] frames and
        [P, T] mask -> [P]."""
        seq = torch.cat([text[:, None], frames], dim=1)  # [P, 1 + T, D]
        if seq.shape[1] > self.position_embeddings.num_embeddings:
            raise ValueError(
                f'1 + {frames.shape[1]} tokens but the position table has '
                f'{self.position_embeddings.num_embeddings} rows')
        mask = torch.cat([frame_mask.new_ones(frame_mask.shape[0], 1),
                          frame_mask], dim=1)  # [P, 1 + T]
        seq = self.dropout(seq + self.position_embeddings.weight[:seq.shape[1]])
        hidden = self.transformer(seq, mask)  # [P, 1 + T, D]
        pooled = self.pooler_act(self.pooler_dense(self.pooler_ln(hidden)[:, 0]))
        return self.classifier(pooled).squeeze(-1)

    def pair_logits(self, text: Tensor, frames: Tensor, frame_mask: Tensor,
                    chunk_size: int | None = None) -> Tensor:
        """Every text against every video: [N, D], [M, T, D], [M, T] ->
        [N, M], ``chunk_size`` pairs (default: the configured one) per pass.
        """
        chunk = chunk_size or self.chunk_size
        n, m = text.shape[0], frames.shape[0]
        out = text.new_empty(n * m)
        for start in range(0, n * m, chunk):
            pairs = torch.arange(start, min(start + chunk, n * m),
                                 device=text.device)
            t_idx, v_idx = pairs // m, pairs % m
            out[start:start + len(pairs)] = self(
                text[t_idx], frames[v_idx], frame_mask[v_idx])
        return out.view(n, m)
