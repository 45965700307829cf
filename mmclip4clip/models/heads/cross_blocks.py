"""CLIP-style transformer blocks of CLIP4Clip's cross modules.

seqTransf and tightTransf run ``n_cross`` pre-LN residual attention blocks
with QuickGELU MLPs, shaped like CLIP's text blocks so they can start from
CLIP's first text blocks (docs/models.md#initialisation-from-clip). Parameter
names follow OpenAI's CLIP layout (``ln_1``, ``attn.in_proj_weight``,
``attn.out_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``), which is also the
layout of the original CLIP4Clip checkpoints, so converting them is a rename of
the prefix.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmclip4clip.models.activation_checkpoint import checkpointed
from mmclip4clip.models.one_query_attention import one_query_attention
from mmclip4clip.models.quick_gelu import quick_gelu_mlp

from .clip_text_tower import ClipTextTower

# The original cross modules' LayerNorm eps (CLIP's own blocks use 1e-5).
CROSS_LN_EPS = 1e-12
# Additive attention bias on padded keys, as in the original code.
MASK_BIAS = -1e6


class CrossAttention(nn.Module):
    """Multi-head self-attention over [P, S, W] tokens with an additive key
    bias, in ``nn.MultiheadAttention``'s parameter layout
    (``in_proj_weight`` [3W, W] stacking q, k, v; ``in_proj_bias``;
    ``out_proj``) and initialisation, so CLIP's text blocks and the original
    checkpoints load into it unchanged.

    The work is split so that a caller can share or skip parts of it:
    :meth:`project` gives the q/k/v of normed tokens (the tight head computes
    them once per text and per video for the first block), :meth:`forward`
    attends from them, for every token or for token 0 only, and
    :meth:`first_token` computes token 0 alone without projecting the other
    tokens' keys and values.

    Args:
        width: token width W.
        heads: attention heads (W divisible by them).
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f'width {width} is not divisible by {heads} heads')
        self.num_heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention's init, in its order (same random draws).
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def project(self, h: Tensor) -> Tensor:
        """[..., W] normed tokens -> [..., 3W] their q, k, v."""
        return F.linear(h, self.in_proj_weight, self.in_proj_bias)

    def forward(self, qkv: Tensor, key_bias: Tensor | None = None,
                first_token_only: bool = False) -> Tensor:
        """Attention from [P, S, 3W] projections (+ additive key bias
        [P, S]) -> [P, S, W], or [P, 1, W] for token 0 only."""
        q, k, v = qkv.chunk(3, dim=-1)
        if first_token_only:
            q = q[:, :1]

        def split(t: Tensor) -> Tensor:  # [P, S, W] -> [P, H, S, W / H]
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        bias = None if key_bias is None else key_bias[:, None, None]
        out = F.scaled_dot_product_attention(split(q), split(k), split(v),
                                             attn_mask=bias)  # [P, H, Sq, d]
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def first_token(self, h: Tensor, key_bias: Tensor | None = None) -> Tensor:
        """Token 0's attention output from [P, S, W] normed tokens (+ key
        bias [P, S]) -> [P, 1, W], without projecting the other tokens'
        keys and values (:func:`one_query_attention`)."""
        heads, width = self.num_heads, h.shape[-1]
        head_dim = width // heads
        w_q, w_k, w_v = self.in_proj_weight.view(3, heads, head_dim, width)
        b_q, b_k, b_v = self.in_proj_bias.view(3, heads, head_dim)
        q = torch.einsum('pD,hdD->phd', h[:, 0], w_q) + b_q  # [P, H, d]
        out = one_query_attention(q, h, w_k, b_k, w_v, b_v, head_dim**-0.5,
                                  key_bias)  # [P, H, d]
        return self.out_proj(out.flatten(1))[:, None]


class QuickGELUMLP(nn.Module):
    """``c_proj(QuickGELU(c_fc(x)))``, the 4x MLP of CLIP's blocks, computed
    with one fused activation (:func:`quick_gelu_mlp`)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return quick_gelu_mlp(x, self.c_fc, self.c_proj)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block as in CLIP: attention then a 4x QuickGELU
    MLP, each added to its input.

    One implementation for training and evaluation: the evaluation
    shortcuts of the tight head are options of :meth:`forward` (q/k/v
    computed by the caller, token 0 only), not a second copy of the block.

    Args:
        width: token width W.
        heads: attention heads.
        eps: LayerNorm eps (1e-12 for the cross modules, 1e-5 for the
            blocks of mmaction2's adapter).
    """

    def __init__(self, width: int, heads: int, eps: float = CROSS_LN_EPS) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = CrossAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = QuickGELUMLP(width, width * 4)

    def forward(self, x: Tensor, key_bias: Tensor | None = None,
                qkv: Tensor | None = None,
                first_token_only: bool = False) -> Tensor:
        """[P, S, W] tokens (+ additive key bias [P, S]) -> [P, S, W].

        Args:
            qkv: ``attn.project(ln_1(x))`` [P, S, 3W] if the caller has it
                (computed once for tokens shared by many sequences).
            first_token_only: compute token 0 only -> [P, 1, W] (the last
                block of a head that reads token 0).
        """
        if first_token_only and qkv is None:
            x = x[:, :1] + self.attn.first_token(self.ln_1(x), key_bias)
        else:
            if qkv is None:
                qkv = self.attn.project(self.ln_1(x))
            if first_token_only:
                x = x[:, :1]
            x = x + self.attn(qkv, key_bias, first_token_only)
        return x + self.mlp(self.ln_2(x))


def key_padding_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, S] mask (1 = real) -> [B, S] additive key bias: every query of a
    sequence sees -1e6 on its padded keys; there is no causal mask."""
    return (1.0 - mask.to(dtype)) * MASK_BIAS


class CrossTransformer(nn.Module):
    """``num_layers`` residual attention blocks with a key padding mask.

    Args:
        width: token width (CLIP's embedding width D).
        num_layers: ``n_cross`` (4 in the paper).
        num_heads: attention heads; default width / 64 as in CLIP.
        eps: LayerNorm eps of the blocks.
        with_cp: activation checkpointing of each block in training (see
            :mod:`mmclip4clip.models.activation_checkpoint`); no effect in
            evaluation or under ``torch.no_grad()``.
    """

    def __init__(self, width: int, num_layers: int,
                 num_heads: int | None = None,
                 eps: float = CROSS_LN_EPS, with_cp: bool = False) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.heads = num_heads or max(width // 64, 1)
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, self.heads, eps)
            for _ in range(num_layers))

    def first_block_qkv(self, x: Tensor) -> Tensor:
        """[..., W] tokens -> [..., 3W]: the first block's q/k/v of them, to
        be passed back as ``first_qkv`` (tokens shared by many sequences
        are projected once)."""
        block = self.resblocks[0]
        return block.attn.project(block.ln_1(x))

    def forward(self, x: Tensor, mask: Tensor | None = None,
                first_qkv: Tensor | None = None,
                first_token_only: bool = False) -> Tensor:
        """[B, S, W] + [B, S] mask -> [B, S, W].

        ``first_qkv``: the first block's q/k/v of ``x``
        (:meth:`first_block_qkv`), if precomputed; ``first_token_only``:
        the last block computes token 0 only, giving [B, 1, W].
        """
        bias = None if mask is None else key_padding_bias(mask, x.dtype)
        last = len(self.resblocks) - 1
        for i, block in enumerate(self.resblocks):
            x = checkpointed(block, x, bias, first_qkv if i == 0 else None,
                             first_token_only and i == last,
                             enabled=self.with_cp and self.training)
        return x

    def load_clip_text_blocks(self, tower: ClipTextTower) -> bool:
        """Start from the first ``num_layers`` blocks of CLIP's text tower.

        Returns False (and warns) when the shapes do not allow it: another
        width, head count or MLP width, or fewer text blocks.
        """
        width = self.resblocks[0].ln_1.normalized_shape[0]
        text_width = tower.width
        text_mlp = (tower.blocks[0]['mlp.c_fc.weight'].shape[0]
                    if tower.blocks else 0)
        if (text_width != width or len(tower.blocks) < len(self.resblocks)
                or tower.num_heads != self.heads or text_mlp != 4 * width):
            warnings.warn(
                f'cross blocks (width {width}, {self.heads} heads, MLP '
                f'{4 * width}, {len(self.resblocks)} layers) cannot start from '
                f'CLIP\'s text blocks (width {text_width}, {tower.num_heads} '
                f'heads, MLP {text_mlp}, {len(tower.blocks)} layers); they '
                'stay randomly initialised',
                stacklevel=2)
            return False
        for block, weights in zip(self.resblocks, tower.blocks, strict=False):
            block.load_state_dict(weights)
        return True


def init_new_module(module: nn.Module, std: float = 0.02) -> None:
    """The original's init of new modules: linear and embedding weights
    N(0, std), biases 0, LayerNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, 'bias', None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def load_position_rows(table: nn.Embedding, tower: ClipTextTower) -> None:
    """Copy CLIP's text positional rows into ``table`` (as many as both
    have; extra rows keep their init)."""
    src = tower.position_embedding
    if src.shape[1] != table.weight.shape[1]:
        warnings.warn(
            f'position table width {table.weight.shape[1]} differs from '
            f'CLIP\'s text width {src.shape[1]}; it stays randomly initialised',
            stacklevel=2)
        return
    rows = min(src.shape[0], table.weight.shape[0])
    table.weight[:rows] = src[:rows]
