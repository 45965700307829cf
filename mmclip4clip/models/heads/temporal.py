"""Temporal loose heads of CLIP4Clip: seqLSTM and seqTransf
(docs/models.md#heads).

Both add their output to the input frame features (``G(F) = f(F) + F``) and
then pool like meanP (see :class:`LooseHead`), so frame order matters but the
video is still one vector.

seqTransf's position table and blocks start from CLIP's text tower
(``init_from_clip``), as in the original.

Too many frames for seqTransf's position table is a ``ValueError``, where
mmaction2's TransformerAdapter fails in torch with a ``RuntimeError``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmclip4clip.registry import MODELS

from .clip_text_tower import clip_text_tower
from .cross_blocks import CrossTransformer, init_new_module, load_position_rows
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

    There is no ``with_cp`` (activation checkpointing) here: the LSTM is a
    single layer, so checkpointing it would not lower the peak of its own
    backward pass, and its [B, T, 4D] gates are small next to the towers'
    activations.

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


@MODELS.register_module()
class SeqTransfHead(LooseHead):
    """seqTransf: frame positions + ``num_layers`` attention blocks over the
    frames, plus a residual.

    Padded frames are hidden from attention by an additive key bias of -1e6,
    as in the original; there is no causal mask. The position table and the
    blocks start from CLIP's text positional embedding and first text blocks
    (:meth:`init_from_clip`, called by the retriever); weights loaded later
    from a checkpoint replace them.

    Args:
        embed_dim: D, the frame feature width.
        num_layers: ``n_cross`` blocks (4 in the paper).
        num_heads: attention heads; default D / 64 as in CLIP's text tower.
        max_positions: rows of the frame position table; the original uses
            CLIP's context length (77), which bounds the number of frames.
        with_cp: activation checkpointing of each block in training (see
            :mod:`mmclip4clip.models.activation_checkpoint`); the output and
            gradients are unchanged.
    """

    def __init__(self, embed_dim: int, num_layers: int = 4,
                 num_heads: int | None = None,
                 max_positions: int = 77, with_cp: bool = False) -> None:
        super().__init__()
        self.frame_position_embeddings = nn.Embedding(max_positions, embed_dim)
        self.transformer = CrossTransformer(embed_dim, num_layers, num_heads,
                                            with_cp=with_cp)
        init_new_module(self)

    def init_from_clip(self, clip: nn.Module) -> None:
        """Position rows and blocks from CLIP's text tower
        (docs/models.md#initialisation-from-clip).

        ``clip``: a Hugging Face ``CLIPModel`` or OpenAI's
        ``clip.model.CLIP`` (mmaction2's model); anything else is a
        ``TypeError`` (see :func:`clip_text_tower`).
        """
        tower = clip_text_tower(clip)
        load_position_rows(self.frame_position_embeddings, tower)
        self.transformer.load_clip_text_blocks(tower)

    def transform(self, x: Tensor, mask: Tensor | None) -> Tensor:
        t = x.shape[1]
        if t > self.frame_position_embeddings.num_embeddings:
            raise ValueError(
                f'{t} frames but the frame position table has '
                f'{self.frame_position_embeddings.num_embeddings} rows')
        h = x + self.frame_position_embeddings.weight[:t]  # [B, T, D]
        if mask is None:
            mask = x.new_ones(x.shape[:2])
        return self.transformer(h, mask) + x
