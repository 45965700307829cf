"""tightTransf: CLIP4Clip's cross-encoder head (spec section 2).

Unlike the loose heads there is no per-video vector: every (text, video) pair
runs through the cross transformer, so scoring N texts against M videos costs
N * M passes. :meth:`TightTransfHead.pair_logits` does them in chunks of
``chunk_size`` pairs, so peak memory is set by the chunk, not by N * M.

Input that does not fit (1 + T tokens past the position table, a bad
``chunk_size``) is a ``ValueError``, where mmaction2's adapters leave shape
errors to torch (``RuntimeError``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmclip4clip.evaluation.scores import PairScores
from mmclip4clip.models.one_query_attention import one_query_attention
from mmclip4clip.registry import MODELS

from .clip_text_tower import clip_text_tower
from .cross_blocks import (
    CROSS_LN_EPS,
    MASK_BIAS,
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
            sets the peak memory of evaluation. Default: 128 on the CPU
            (the activations stay in cache: faster than larger chunks) and
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
        self.pooler_act = QuickGELU()
        self.classifier = nn.Linear(embed_dim, 1)
        init_new_module(self)

    def init_from_clip(self, clip: nn.Module) -> None:
        """Position rows and blocks from CLIP's text tower (spec section 2).

        ``clip``: a Hugging Face ``CLIPModel`` or OpenAI's
        ``clip.model.CLIP`` (mmaction2's model); anything else is a
        ``TypeError`` (see :func:`clip_text_tower`).
        """
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
        return PairScores(self.pair_logits, text, frames, frame_mask)

    def batch_scores(self, text: Tensor, frames: Tensor, frame_mask: Tensor,
                     scale: float | Tensor | None = None) -> PairScores:
        """The scores the training loss runs over: this process's B x B
        in-batch pairs, as in the original (not gathered: the pairs of
        other processes would cost W^2 times the cross-encoder passes)."""
        return self.scores(text, frames, frame_mask)

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
        seq = torch.cat([text[:, None], frames], dim=1)  # [P, 1 + T, D]
        self._check_length(frames.shape[1])
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

        In training (dropout active) each pair runs :meth:`forward`. In
        evaluation the same function is computed with less work: the first
        block's LayerNorm and q/k/v projections are computed once per text
        and once per video, not once per pair, and the last block computes
        only token 0, the only one the pooler reads (about 3/4 of the
        per-pair products at 12 frames and 4 blocks).
        """
        chunk = chunk_size or self.chunk_size or (
            128 if text.device.type == 'cpu' else 2048)
        n, m = text.shape[0], frames.shape[0]
        shared = None if self.training else self._shared_first_block(text,
                                                                     frames)
        out = text.new_empty(n * m)
        for start in range(0, n * m, chunk):
            pairs = torch.arange(start, min(start + chunk, n * m),
                                 device=text.device)
            t_idx, v_idx = pairs // m, pairs % m
            if shared is None:
                logits = self(text[t_idx], frames[v_idx], frame_mask[v_idx])
            else:
                logits = self._pairs_from_shared(shared, t_idx, v_idx,
                                                 frame_mask[v_idx])
            out[start:start + len(pairs)] = logits
        return out.view(n, m)

    def _shared_first_block(self, text: Tensor,
                            frames: Tensor) -> dict[str, Tensor]:
        """Block 1 inputs and q/k/v of every text token ([N, ...]) and
        every video's frame tokens ([M, T, ...])."""
        t = frames.shape[1]
        self._check_length(t)
        pos = self.position_embeddings.weight[:1 + t]
        block = self.transformer.resblocks[0]
        text_x = text + pos[0]  # [N, D]
        frame_x = frames + pos[1:]  # [M, T, D]
        attn = block.attn
        return dict(
            text_x=text_x, frame_x=frame_x,
            text_qkv=F.linear(block.ln_1(text_x), attn.in_proj_weight,
                              attn.in_proj_bias),  # [N, 3D]
            frame_qkv=F.linear(block.ln_1(frame_x), attn.in_proj_weight,
                               attn.in_proj_bias))  # [M, T, 3D]

    def _pairs_from_shared(self, shared: dict[str, Tensor], t_idx: Tensor,
                           v_idx: Tensor, frame_mask: Tensor) -> Tensor:
        """Logits [P] of the pairs (t_idx, v_idx); ``frame_mask`` [P, T]."""
        x = torch.cat([shared['text_x'][t_idx, None],
                       shared['frame_x'][v_idx]], dim=1)  # [P, 1 + T, D]
        qkv = torch.cat([shared['text_qkv'][t_idx, None],
                         shared['frame_qkv'][v_idx]], dim=1)  # [P, S, 3D]
        real = torch.cat([frame_mask.new_ones(len(t_idx), 1), frame_mask], 1)
        bias = ((1.0 - real.to(x.dtype)) * MASK_BIAS)[:, None, None]  # [P,1,1,S]
        blocks = self.transformer.resblocks
        for i, block in enumerate(blocks):
            x = _block_forward(block, x, bias, qkv if i == 0 else None,
                               first_token_only=i == len(blocks) - 1)
        # x: [P, 1, D], token 0 only
        pooled = self.pooler_act(self.pooler_dense(self.pooler_ln(x[:, 0])))
        return self.classifier(pooled).squeeze(-1)


def _block_forward(block: nn.Module, x: Tensor, bias: Tensor,
                   qkv: Tensor | None = None,
                   first_token_only: bool = False) -> Tensor:
    """A :class:`ResidualAttentionBlock` on [P, S, D] tokens with an additive
    key bias [P, 1, 1, S], given (optionally) its precomputed q/k/v
    [P, S, 3D]; with ``first_token_only`` only token 0 is computed
    ([P, 1, D]: queries, residual and MLP of the other tokens are skipped).
    """
    attn = block.attn
    if qkv is None and first_token_only:
        return _first_token_block(block, x, bias)
    if qkv is None:
        q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight,
                           attn.in_proj_bias).chunk(3, dim=-1)
    else:
        q, k, v = qkv.chunk(3, dim=-1)
        if first_token_only:
            q, x = q[:, :1], x[:, :1]

    def split(t: Tensor) -> Tensor:  # [P, S, D] -> [P, heads, S, D / heads]
        return t.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v),
                                         attn_mask=bias)  # [P, H, Sq, d]
    x = x + attn.out_proj(out.transpose(1, 2).flatten(2))
    return x + block.mlp(block.ln_2(x))


def _first_token_block(block: nn.Module, x: Tensor, bias: Tensor) -> Tensor:
    """Token 0's output of a block ([P, S, D] + key bias [P, 1, 1, S] ->
    [P, 1, D]) without projecting the other tokens' keys and values
    (:func:`one_query_attention`)."""
    attn = block.attn
    heads, width = attn.num_heads, x.shape[-1]
    head_dim = width // heads
    w_q, w_k, w_v = attn.in_proj_weight.view(3, heads, head_dim, width)
    b_q, b_k, b_v = attn.in_proj_bias.view(3, heads, head_dim)
    h = block.ln_1(x)  # [P, S, D]
    q = torch.einsum('pD,hdD->phd', h[:, 0], w_q) + b_q  # [P, H, d]
    out = one_query_attention(q, h, w_k, b_k, w_v, b_v, head_dim**-0.5,
                              bias[:, 0, 0])  # [P, H, d]
    x = x[:, :1] + attn.out_proj(out.flatten(1))[:, None]
    return x + block.mlp(block.ln_2(x))
