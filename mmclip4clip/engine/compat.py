"""Fixes that let mmengine 0.10.7 run CPU-only distributed jobs (safe
checkpoint loading for torch >= 2.6 is in :mod:`.checkpoint_io`)."""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from mmengine.config import Config

# How long a gloo process waits for its peers in a collective before the job
# ends (gloo's own default is 30 minutes, a silent wait for a hung peer).
# ``env_cfg.dist_cfg.timeout`` (seconds) overrides it.
CPU_COLLECTIVE_TIMEOUT_S = 300


def enable_cpu_distributed(cfg: Config) -> None:
    """Prepare a torchrun job for CPU-only machines (gloo backend).

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` and its DDP
    wrapper passes ``device_ids=[local_rank]``; both fail without CUDA. We
    start the gloo process group ourselves (the Runner then skips its own
    initialisation) and wrap the model with ``device_ids=None``. A
    collective waits at most ``env_cfg.dist_cfg.timeout`` seconds
    (:data:`CPU_COLLECTIVE_TIMEOUT_S` by default) for the other processes.
    On CUDA mmengine starts the process group with the same setting.
    """
    if torch.cuda.is_available():
        return
    dist_cfg = (cfg.get('env_cfg') or {}).get('dist_cfg') or {}
    timeout = dist_cfg.get('timeout') or CPU_COLLECTIVE_TIMEOUT_S
    if not dist.is_initialized():
        dist.init_process_group(
            backend='gloo', rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']),
            timeout=timedelta(seconds=timeout))
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
