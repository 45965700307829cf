"""All-gather that carries gradients back to every process correctly.

Why not ``torch.distributed.nn.functional.all_gather``: it computes the same
gradient (its backward sums every process's gradient of the local rows, an
all-to-all and a sum on gloo, a reduce-scatter on NCCL), but the torch
releases this package runs on (2.13) deprecate it with a ``FutureWarning``
on every call and point to the private ``torch.distributed.
_functional_collectives``; a warning per training step, or a private API,
is worse than these twenty lines.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


class _AllGather(torch.autograd.Function):
    """Concatenate equal-shaped tensors of all processes along dim 0.

    Backward: every process holds the same loss over the gathered batch, so
    the gradient of the local rows is the SUM over processes of their
    gradients for those rows (an all-reduce), not just the local slice. With
    the data-parallel averaging of parameter gradients this gives exactly the
    one-process gradient on the concatenated batch.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.rank = dist.get_rank()
        ctx.batch = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # A copy: autograd may hand the same gradient to other branches.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = ctx.rank * ctx.batch
        return grad[start:start + ctx.batch]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """[B, ...] on each of W processes -> [W * B, ...] in rank order.

    The identity when not running distributed. All processes must pass the
    same batch size.
    """
    if not (dist.is_available() and dist.is_initialized()) \
            or dist.get_world_size() == 1:
        return x
    return _AllGather.apply(x)
