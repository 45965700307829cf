"""Temporal loose heads of CLIP4Clip: seqLSTM and seqTransf (spec section 2).

Both add their output to the input frame features (``G(F) = f(F) + F``) and
then pool like meanP (see :class:`LooseHead`), so frame order matters but the
video is still one vector.

Not yet done (issue 3): initialising the frame position table and the
seqTransf blocks from CLIP's text transformer; both start from random
weights here.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmclip4clip.registry import MODELS

from .loose import LooseHead


def frame_lengths(mask: Tensor | None, batch: int, frames: int,
                  device: torch.device) -> Tensor:
    """Number of real frames per video ([B] int64); no mask = all real."""
    if mask is None:
        return torch.full((batch, ), frames, dtype=torch.long, device=device)
    return mask.long().sum(dim=1)


@MODELS.register_module()
class SeqLSTMHead(LooseHead):
    """seqLSTM: a 1-layer LSTM over the real frames, plus a residual.

    Real frames come first (the mask's convention); the LSTM runs over them
    only (packed by length), padded positions keep their input features.

    Args:
        embed_dim: D, the frame feature width.
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(embed_dim, embed_dim, num_layers=1,
                            batch_first=True)

    def transform(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, t, _ = x.shape
        # A video without real frames gets one step (its output is masked).
        lengths = frame_lengths(mask, b, t, x.device).clamp(min=1)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True,
                                     total_length=t)  # [B, T, D]
        keep = torch.arange(t, device=x.device)[None] < lengths[:, None]
        out = torch.where(keep[..., None], out, torch.zeros_like(out))
        return out + x


class QuickGELU(nn.Module):
    """CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block as in CLIP (QuickGELU MLP, 4x width), with
    CLIP4Clip's cross-module LayerNorm eps of 1e-12."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=1e-12)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width, eps=1e-12)
        self.mlp = nn.Sequential(nn.Linear(width, width * 4), QuickGELU(),
                                 nn.Linear(width * 4, width))

    def forward(self, x: Tensor, key_bias: Tensor) -> Tensor:
        """[B, T, W] + additive key bias [B * heads, T, T] -> [B, T, W]."""
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=key_bias, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


@MODELS.register_module()
class SeqTransfHead(LooseHead):
    """seqTransf: frame positions + ``num_layers`` attention blocks over the
    frames, plus a residual.

    Padded frames are hidden from attention by an additive key bias of -1e6,
    as in the original; there is no causal mask.

    Args:
        embed_dim: D, the frame feature width (D / 64 heads, at least 1).
        num_layers: ``n_cross`` blocks (4 in the paper).
        max_frames: rows of the frame position table.
    """

    def __init__(self, embed_dim: int, num_layers: int = 4,
                 max_frames: int = 128) -> None:
        super().__init__()
        self.heads = max(embed_dim // 64, 1)
        self.frame_position_embeddings = nn.Embedding(max_frames, embed_dim)
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(embed_dim, self.heads)
            for _ in range(num_layers))

    def transform(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, t, _ = x.shape
        if t > self.frame_position_embeddings.num_embeddings:
            raise ValueError(
                f'{t} frames but the frame position table has '
                f'{self.frame_position_embeddings.num_embeddings} rows')
        h = x + self.frame_position_embeddings.weight[:t]  # [B, T, D]
        if mask is None:
            mask = x.new_ones(b, t)
        key_bias = (1.0 - mask.to(x.dtype))[:, None, :] * -1e6  # [B, 1, T]
        key_bias = key_bias.expand(b, t, t).repeat_interleave(self.heads, 0)
        for block in self.blocks:
            h = block(h, key_bias)
        return h + x
