"""Activation checkpointing of transformer blocks (the ``with_cp`` option).

Without it, autograd keeps every block's inner tensors (normed tokens,
q/k/v, attention output, the 4x wide MLP hidden, and the rescaled MLP weights
of :func:`~mmclip4clip.models.quick_gelu.quick_gelu_mlp`) from the forward
pass to the backward pass. With it, a block keeps only its input and runs its forward a
second time during the backward pass, so a training step holds each block's
input plus one block's inner activations at a time, at the cost of that
second forward. The option is named ``with_cp`` as in mmaction2's and
mmpretrain's backbones.

It is a property of the forward pass alone: outside training, or under
``torch.no_grad()`` (evaluation, the no-grad encoding pass of gradient
caching), the blocks run as they are. ``torch.utils.checkpoint`` restores
the RNG state for the second forward, so dropout draws the same masks and the
loss and gradients are those without checkpointing. Frozen blocks
(``freeze_layer_num``) whose input needs no gradient record nothing for the
backward pass either way.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def checkpointed(fn: Callable[..., torch.Tensor], *args,
                 enabled: bool) -> torch.Tensor:
    """``fn(*args)``, checkpointed when ``enabled`` and autograd records
    (grad mode on); the caller passes ``with_cp and self.training``."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False,
                          preserve_rng_state=True)
    return fn(*args)
