"""Multi-head attention for one query per sequence, without projecting the
keys and values of the other tokens.

The last block of a tower (or of tightTransf) only has to produce the one
token that is read. Per head, ``q . (W_k h_s + b_k) = (W_k^T q) . h_s +
q . b_k``, where the second term is the same for every key and cancels in
the softmax; and the values' projection commutes with the attention
average, whose weights sum to 1: ``sum_s a_s (W_v h_s + b_v) =
W_v (sum_s a_s h_s) + b_v``. So the query's projections replace S keys' and
values'.
"""
from __future__ import annotations

import torch
from torch import Tensor


def one_query_attention(q: Tensor, h: Tensor, w_k: Tensor, b_k: Tensor,
                        w_v: Tensor, b_v: Tensor, scale: float,
                        key_bias: Tensor | None = None) -> Tensor:
    """Attention of one query per sequence over normalised tokens.

    Args:
        q: [N, H, d] projected queries (one per sequence).
        h: [N, S, W] the (layer-normed) tokens keys and values come from.
        w_k, w_v: [H, d, W] key and value projection weights, per head.
        b_k, b_v: [H, d] their biases.
        scale: the logits' scale (``d ** -0.5``).
        key_bias: optional additive bias on the keys, [N, S].

    Returns:
        [N, H, d] per-head attention outputs (before the output projection).
    """
    q_in = torch.einsum('nhd,hdw->nhw', q, w_k)  # [N, H, W]
    # q . b_k changes no weight; it is kept so b_k stays in the graph (DDP
    # expects every parameter to be used) with the gradient it has in the
    # full layer.
    key_shift = (q * b_k).sum(dim=-1)  # [N, H]
    logits = (torch.einsum('nhw,nsw->nhs', q_in, h)
              + key_shift[..., None]) * scale  # [N, H, S]
    if key_bias is not None:
        logits = logits + key_bias[:, None]
    weights = torch.softmax(logits, dim=-1)
    mixed = torch.einsum('nhs,nsw->nhw', weights, h)  # [N, H, W]
    return torch.einsum('nhw,hdw->nhd', mixed, w_v) + b_v  # [N, H, d]
