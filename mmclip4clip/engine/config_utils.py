"""Config handling shared by ``tools/train.py`` and ``tools/test.py``."""
from __future__ import annotations

import os.path as osp

from mmengine.config import Config

from mmclip4clip.engine.cfg_options import (
    ConfigOptionError,
    check_cfg_options,
    check_settings,
)
from mmclip4clip.engine.compat import enable_cpu_distributed

__all__ = ['ConfigOptionError', 'apply_common_args', 'finish_distributed',
           'merge_cfg_options']


def merge_cfg_options(cfg: Config, options: dict | None) -> None:
    """Merge ``--cfg-options`` into ``cfg`` after checking every key and
    value (:func:`check_cfg_options`), then range-check the loop and loader
    settings of the result (:func:`check_settings`).

    Raises:
        ConfigOptionError: naming the key, before anything is built.
    """
    if options:
        check_cfg_options(cfg, options)
        cfg.merge_from_dict(options)
    check_settings(cfg)


def apply_common_args(cfg: Config, config_path: str, work_dir: str | None,
                      launcher: str) -> None:
    """Work dir (default ``work_dirs/<config name>``) and launcher, shared by
    ``tools/train.py`` and ``tools/test.py``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])
    cfg.launcher = launcher
    if launcher != 'none':
        enable_cpu_distributed(cfg)


def finish_distributed() -> None:
    """Wait for every process, then close the process group.

    Without this, a gloo process that finishes first can abort at exit
    ("terminate called without an active exception") while another still
    saves its last checkpoint, and torchrun reports the job as failed.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
