"""CLIP-style transformer blocks of CLIP4Clip's cross modules.

seqTransf and tightTransf run ``n_cross`` pre-LN residual attention blocks
with QuickGELU MLPs, shaped like CLIP's text blocks so they can start from
CLIP's first text blocks (spec section 2). Parameter names follow OpenAI's
CLIP layout (``ln_1``, ``attn.in_proj_weight``, ``attn.out_proj``, ``ln_2``,
``mlp.c_fc``, ``mlp.c_proj``), which is also the layout of the original
CLIP4Clip checkpoints, so converting them is a rename of the prefix.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from mmclip4clip.models.activation_checkpoint import checkpointed
from mmclip4clip.models.quick_gelu import quick_gelu_mlp

from .clip_text_tower import ClipTextTower

# The original cross modules' LayerNorm eps (CLIP's own blocks use 1e-5).
CROSS_LN_EPS = 1e-12
# Additive attention bias on padded keys, as in the original code.
MASK_BIAS = -1e6


class QuickGELU(nn.Module):
    """CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


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

    Args:
        width: token width W.
        heads: attention heads.
        eps: LayerNorm eps (1e-12 for the cross modules, 1e-5 for the
            blocks of mmaction2's adapter).
    """

    def __init__(self, width: int, heads: int, eps: float = CROSS_LN_EPS) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = QuickGELUMLP(width, width * 4)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """[B, S, W] (+ additive bias [B * heads, S, S]) -> [B, S, W]."""
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=attn_bias, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


def key_padding_bias(mask: Tensor, heads: int, dtype: torch.dtype) -> Tensor:
    """[B, S] mask (1 = real) -> [B * heads, S, S] additive attention bias.

    Every query of a sequence sees -1e6 on its padded keys; there is no
    causal mask.
    """
    b, s = mask.shape
    bias = (1.0 - mask.to(dtype))[:, None, :] * MASK_BIAS  # [B, 1, S]
    return bias.expand(b, s, s).repeat_interleave(heads, dim=0)


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

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """[B, S, W] + [B, S] mask -> [B, S, W]."""
        bias = None if mask is None else key_padding_bias(
            mask, self.heads, x.dtype)
        for block in self.resblocks:
            x = checkpointed(block, x, bias,
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
