"""Evaluate a CLIP4Clip checkpoint; optionally dump scores and ranks.

    python tools/test.py CONFIG CHECKPOINT [--dump result.pkl] [--work-dir DIR]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]
"""
import argparse
import os
import os.path as osp

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
from mmclip4clip.utils.config import of_type


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test a CLIP4Clip model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the test logs go')
    parser.add_argument(
        '--dump', help='pickle file for the score matrix, video ids, '
        'captions, ranks and metrics (layout in the README)')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision inference')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, KEY=VALUE')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'],
                        help='job launcher')
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def merge_args(cfg: Config, args: argparse.Namespace) -> Config:
    apply_common_args(cfg, args.config, args.work_dir, args.launcher)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint} does not exist')
    cfg.load_from = args.checkpoint
    if args.dump is not None:
        evaluators = cfg.test_evaluator
        if isinstance(evaluators, dict):
            evaluators = [evaluators]
        targets = of_type(evaluators, 'RetrievalMetric')
        if not targets:
            raise ValueError('--dump needs a RetrievalMetric in test_evaluator')
        for evaluator in targets:
            evaluator['dump_file'] = args.dump
    if args.amp:
        test_cfg = dict(cfg.get('test_cfg') or {})
        test_cfg['fp16'] = True
        cfg.test_cfg = test_cfg
    return cfg


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    try:
        merge_cfg_options(cfg, args.cfg_options)
    except ConfigOptionError as err:
        raise SystemExit(f'error: {err}') from None  # before anything runs
    cfg = merge_args(cfg, args)
    with naming_absent_ranks():
        runner = build_runner(cfg)
        runner.test()
        finish_distributed()


if __name__ == '__main__':
    main()
