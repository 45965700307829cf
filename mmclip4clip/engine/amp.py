"""Mixed-precision training that also runs on the CPU.

mmengine's ``AmpOptimWrapper`` refuses to start without an accelerator. On
CUDA :class:`MixedPrecisionOptimWrapper` is exactly that wrapper (fp16 with a
dynamic loss scaler, or bf16 via ``dtype``); on the CPU it autocasts to
bfloat16, the only type CPU autocast supports, with no loss scaling (bf16
keeps fp32's exponent range, so gradients do not underflow). Note that a CPU
without bf16 units runs bf16 slower than fp32: there it saves memory, not
time.
"""
from __future__ import annotations

import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from mmclip4clip.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class MixedPrecisionOptimWrapper(AmpOptimWrapper):
    """``AmpOptimWrapper`` on CUDA; bf16 autocast without a scaler on CPU.

    Args:
        loss_scale: as ``AmpOptimWrapper`` (CUDA only).
        dtype: autocast type: None (fp16 on CUDA, bf16 on CPU), 'float16'
            (CUDA only) or 'bfloat16'.
        **kwargs: the arguments of :class:`mmengine.optim.OptimWrapper`.
    """

    def __init__(self, loss_scale: str | float | dict = 'dynamic',
                 dtype: str | torch.dtype | None = None, **kwargs) -> None:
        self.on_cpu = not torch.cuda.is_available()
        if not self.on_cpu:
            super().__init__(loss_scale=loss_scale, dtype=dtype, **kwargs)
            return
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if dtype not in (None, torch.bfloat16):
            raise ValueError(f'CPU autocast supports only bfloat16, not {dtype}')
        OptimWrapper.__init__(self, **kwargs)
        self.cast_dtype = torch.bfloat16
        self.loss_scaler = None

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        if not self.on_cpu:
            return super().backward(loss, **kwargs)
        loss.backward(**kwargs)
        self._inner_count += 1

    def step(self, **kwargs) -> None:
        if not self.on_cpu:
            return super().step(**kwargs)
        if self.clip_grad_kwargs:
            self._clip_grad()
        self.optimizer.step(**kwargs)

    def state_dict(self) -> dict:
        if not self.on_cpu:
            return super().state_dict()
        return OptimWrapper.state_dict(self)

    def load_state_dict(self, state_dict: dict) -> None:
        if self.on_cpu:
            state_dict = dict(state_dict)
            state_dict.pop('loss_scaler', None)  # saved by a CUDA run
        super().load_state_dict(state_dict)
