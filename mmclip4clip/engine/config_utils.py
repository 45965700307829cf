"""Config handling shared by ``tools/train.py`` and ``tools/test.py``."""
from __future__ import annotations

import os.path as osp

from mmengine.config import Config

from mmclip4clip.engine.compat import enable_cpu_distributed

# Top-level keys the mmengine Runner reads, plus those our configs use.
RUNNER_KEYS = frozenset({
    'auto_scale_lr', 'custom_hooks', 'custom_imports', 'data_preprocessor',
    'default_hooks', 'default_scope', 'env_cfg', 'experiment_name',
    'launcher', 'load_from', 'log_level', 'log_processor',
    'model_wrapper_cfg', 'optim_wrapper', 'param_scheduler', 'randomness',
    'resume', 'test_cfg', 'test_dataloader', 'test_evaluator', 'train_cfg',
    'train_dataloader', 'val_cfg', 'val_dataloader', 'val_evaluator',
    'visualizer', 'model', 'work_dir', 'find_unused_parameters'
})


def merge_cfg_options(cfg: Config, options: dict | None) -> None:
    """Merge ``--cfg-options`` into ``cfg``, refusing unknown keys.

    A dotted key must name an existing entry, or a new entry inside an
    existing dict (e.g. ``randomness.deterministic``). A typo such as
    ``train_cfg.max_epoch`` would otherwise surface later, or never.
    Unknown arguments of a component (``model.head.foo``) are caught when the
    component is built, with its class named.
    """
    if not options:
        return
    for key in options:
        parts = key.split('.')
        if parts[0] not in cfg and parts[0] not in RUNNER_KEYS:
            raise KeyError(f'--cfg-options {key}: the config has no key '
                           f'{parts[0]!r} and the Runner does not read one')
        node = cfg.get(parts[0])
        for depth, part in enumerate(parts[1:-1], start=1):
            if isinstance(node, list) and part.isdigit() \
                    and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                raise KeyError(
                    f'--cfg-options {key}: the config has no key '
                    f'{".".join(parts[:depth + 1])!r}')
    cfg.merge_from_dict(options)


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
