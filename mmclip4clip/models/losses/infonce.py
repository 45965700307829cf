"""Symmetric InfoNCE, CLIP4Clip's training objective
(docs/training.md#objective)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmclip4clip.registry import MODELS


@MODELS.register_module()
class SymmetricInfoNCELoss(nn.Module):
    """``(CE(S) + CE(S.T)) / 2`` where row i of ``S`` matches column i.

    ``CE(S)`` is the mean over rows of ``-log_softmax(S, dim=1)[i, i]``.

    Args:
        loss_weight: multiplies the loss.
    """

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, sim: Tensor) -> Tensor:
        """[N, N] text x video logits -> scalar loss."""
        target = torch.arange(sim.shape[0], device=sim.device)
        t2v = F.cross_entropy(sim, target)
        v2t = F.cross_entropy(sim.t(), target)
        return self.loss_weight * (t2v + v2t) / 2
