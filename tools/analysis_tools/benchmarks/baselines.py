"""The earlier implementations' way of paying each cost, measured beside ours.

Absolute figures depend on the host; these give the comparison that does
not: the same shapes and weights,
the same machine, the same run.

- Towers: transformers' own CLIP forward (``get_image_features`` /
  ``get_text_features``, sdpa attention, every token through every block,
  text as long as it was padded), which mmaction2's port and most
  re-implementations call.
- Training step: that forward, meanP (masked mean of normalised frame
  features), symmetric InfoNCE, AdamW.
- Metrics: the original code's full sort of every row of the score matrix,
  then the position of the ground truth's score, in both directions.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def image_features(clip: nn.Module, frames: Tensor) -> Tensor:
    """[B, T, 3, H, W] -> [B, T, D] with transformers' forward."""
    feats = clip.get_image_features(pixel_values=frames.flatten(0, 1))
    return feats.pooler_output.view(*frames.shape[:2], -1)


def text_features(clip: nn.Module, input_ids: Tensor,
                  attention_mask: Tensor) -> Tensor:
    """[N, L] ids -> [N, D] with transformers' forward (all L positions)."""
    return clip.get_text_features(input_ids=input_ids,
                                  attention_mask=attention_mask).pooler_output


def train_step(clip: nn.Module, optimizer: torch.optim.Optimizer,
               frames: Tensor, input_ids: Tensor,
               attention_mask: Tensor) -> None:
    """One meanP step: forward, symmetric InfoNCE, backward, AdamW."""
    optimizer.zero_grad(set_to_none=True)
    video = F.normalize(image_features(clip, frames), dim=-1).mean(dim=1)
    video = F.normalize(video, dim=-1)
    text = F.normalize(text_features(clip, input_ids, attention_mask), dim=-1)
    logits = clip.logit_scale.exp() * text @ video.T
    target = torch.arange(logits.shape[0], device=logits.device)
    loss = (F.cross_entropy(logits, target) +
            F.cross_entropy(logits.T, target)) / 2
    loss.backward()
    optimizer.step()


def sorted_ranks(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of the diagonal, text->video and video->text, found by
    sorting every row and column in full (the original's method)."""

    def one_way(x: np.ndarray) -> np.ndarray:
        ordered = np.sort(-x, axis=1)
        return (ordered == -np.diag(x)[:, None]).argmax(axis=1)

    return one_way(scores), one_way(scores.T)
