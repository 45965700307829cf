"""Train a CLIP4Clip model from a config file.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]
"""
import argparse
import os

from mmengine.config import Config, DictAction

import mmclip4clip  # noqa: F401  (registers every component)
from mmclip4clip.engine.config_utils import (
    ConfigOptionError,
    apply_common_args,
    finish_distributed,
    merge_cfg_options,
    naming_absent_ranks,
)
from mmclip4clip.engine.runner import build_runner


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a CLIP4Clip model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from CKPT, or without a value from the latest '
        'checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision: fp16 on CUDA, bf16 on the CPU')
    parser.add_argument('--no-validate', action='store_true',
                        help='skip validation during training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate with the batch size')
    parser.add_argument('--seed', type=int, default=None, help='random seed')
    parser.add_argument('--deterministic', action='store_true',
                        help='deterministic algorithms (slower)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, KEY=VALUE')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'],
                        help='job launcher')
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def use_amp_optimiser(cfg: Config) -> None:
    """``--amp``: fp16 + loss scaling on CUDA, bf16 autocast on the CPU.

    Applied before ``--cfg-options`` are checked and merged, so that options
    of the mixed-precision wrapper (``optim_wrapper.loss_scale=512``) are
    accepted with ``--amp``.
    """
    cfg.optim_wrapper.type = 'MixedPrecisionOptimWrapper'
    cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def merge_args(cfg: Config, args: argparse.Namespace) -> Config:
    apply_common_args(cfg, args.config, args.work_dir, args.launcher)
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    if args.amp:
        # Validation during training under autocast too, as tools/test.py
        # --amp (mmengine's autocast: fp16 on CUDA, bf16 on the CPU).
        if cfg.get('val_cfg') is not None:
            cfg.val_cfg.fp16 = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        if not os.path.isfile(args.resume):
            raise FileNotFoundError(
                f'--resume {args.resume}: no such checkpoint file')
        cfg.resume, cfg.load_from = True, args.resume
    if args.auto_scale_lr:
        cfg.auto_scale_lr.enable = True
    randomness = dict(cfg.get('randomness') or {})
    if args.seed is not None:
        randomness['seed'] = args.seed
    if args.deterministic:
        randomness['deterministic'] = True
    cfg.randomness = randomness
    return cfg


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.amp:
        use_amp_optimiser(cfg)
    try:
        merge_cfg_options(cfg, args.cfg_options)
    except ConfigOptionError as err:
        raise SystemExit(f'error: {err}') from None  # before anything runs
    cfg = merge_args(cfg, args)
    with naming_absent_ranks():
        runner = build_runner(cfg)
        runner.train()
        finish_distributed()


if __name__ == '__main__':
    main()
