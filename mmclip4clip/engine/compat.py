"""Fixes that let mmengine 0.10.7 run CPU-only distributed jobs (safe
checkpoint loading for torch >= 2.6 is in :mod:`.checkpoint_io`)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from mmengine.config import Config


def enable_cpu_distributed(cfg: Config) -> None:
    """Prepare a torchrun job for CPU-only machines (gloo backend).

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` and its DDP
    wrapper passes ``device_ids=[local_rank]``; both fail without CUDA. We
    start the gloo process group ourselves (the Runner then skips its own
    initialisation) and wrap the model with ``device_ids=None``.
    """
    if torch.cuda.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group(
            backend='gloo', rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']))
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
