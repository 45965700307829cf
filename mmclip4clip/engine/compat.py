"""Distributed training: fixes that let mmengine 0.10.7 run CPU-only jobs
(safe checkpoint loading for torch >= 2.6 is in :mod:`.checkpoint_io`) and
the DDP wrapper that runs micro-batched steps."""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS
from torch import Tensor

from .grad_cache import micro_batched_train_step

# How long a gloo process waits for its peers in a collective before the job
# ends (gloo's own default is 30 minutes, a silent wait for a hung peer).
# ``env_cfg.dist_cfg.timeout`` (seconds) overrides it.
CPU_COLLECTIVE_TIMEOUT_S = 300


def enable_cpu_distributed(cfg: Config) -> None:
    """Prepare a torchrun job: our DDP wrapper, and gloo on CPU-only
    machines.

    The model wrapper defaults to :class:`CLIP4ClipDistributedDataParallel`
    (mmengine's wrapper plus micro-batched steps) with mmengine's defaults
    (``broadcast_buffers=False``, the config's ``find_unused_parameters``).

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` and its DDP
    wrapper passes ``device_ids=[local_rank]``; both fail without CUDA. We
    start the gloo process group ourselves (the Runner then skips its own
    initialisation) and wrap the model with ``device_ids=None``. A
    collective waits at most ``env_cfg.dist_cfg.timeout`` seconds
    (:data:`CPU_COLLECTIVE_TIMEOUT_S` by default) for the other processes.
    On CUDA mmengine starts the process group with the same setting.
    """
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    if 'type' not in wrapper:
        wrapper.update(type='CLIP4ClipDistributedDataParallel',
                       broadcast_buffers=wrapper.get('broadcast_buffers',
                                                     False),
                       find_unused_parameters=wrapper.get(
                           'find_unused_parameters',
                           cfg.get('find_unused_parameters', False)))
    cfg.model_wrapper_cfg = wrapper
    if torch.cuda.is_available():
        return
    dist_cfg = (cfg.get('env_cfg') or {}).get('dist_cfg') or {}
    timeout = dist_cfg.get('timeout') or CPU_COLLECTIVE_TIMEOUT_S
    if not dist.is_initialized():
        dist.init_process_group(
            backend='gloo', rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']),
            timeout=timedelta(seconds=timeout))
    cfg.model_wrapper_cfg['device_ids'] = None


# In mmengine's root registry, not our scope's: the Runner looks the
# wrapper type up there without switching to the default scope.
@MODEL_WRAPPERS.register_module()
class CLIP4ClipDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper; a model with ``micro_batch_size`` set trains
    in micro-batches (:func:`~.grad_cache.micro_batched_train_step`).

    Why a wrapper: under DDP mmengine calls the wrapper's ``train_step``,
    not the model's, and only the wrapper can hold back the gradient
    all-reduce (``no_sync``) until the last micro-batch, so that each
    optimiser step reduces the gradients once, as a plain step does.
    """

    def train_step(self, data, optim_wrapper) -> dict[str, Tensor]:
        if getattr(self.module, 'micro_batch_size', None) is None:
            return super().train_step(data, optim_wrapper)
        return micro_batched_train_step(self.module, data, optim_wrapper,
                                        wrapper=self)
