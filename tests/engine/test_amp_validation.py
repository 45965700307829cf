"""``tools/train.py --amp`` validates under autocast, as documented (it used
to run validation in fp32; only tools/test.py turned autocast on).

The run is one tiny epoch with validation; a hook records the dtype that
the model's linear layers produce while validating.
"""
import sys
from pathlib import Path

import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner
from torch import nn

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ('configs/retrieval/clip4clip/'
                 'clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb.py')


class LinearDtypeProbe(Hook):
    """Records the output dtypes of every ``nn.Linear`` during validation."""

    def __init__(self) -> None:
        self.val_dtypes: set[torch.dtype] = set()
        self.handles = []

    def before_val(self, runner) -> None:
        for module in runner.model.modules():
            if isinstance(module, nn.Linear):
                self.handles.append(module.register_forward_hook(
                    lambda _m, _i, out: self.val_dtypes.add(out.dtype)))

    def after_val(self, runner) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def test_amp_training_validates_under_autocast(make_workspace, monkeypatch,
                                               load_tool):
    tmp_path = make_workspace('amp_validation')
    monkeypatch.chdir(tmp_path)
    train = load_tool('tools/train.py')
    monkeypatch.setattr(sys, 'argv', [
        'train.py', str(CONFIG), '--amp', '--work-dir', str(tmp_path / 'w'),
        '--cfg-options', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
        'train_dataloader.dataset.indices=8',
        'val_dataloader.dataset.indices=4', 'default_hooks.checkpoint.interval=5'
    ])
    args = train.parse_args()
    cfg = train.Config.fromfile(args.config)
    train.merge_cfg_options(cfg, args.cfg_options)
    cfg = train.merge_args(cfg, args)
    runner = Runner.from_cfg(cfg)
    probe = LinearDtypeProbe()
    runner.register_hook(probe)
    runner.train()
    expected = torch.float16 if torch.cuda.is_available() else torch.bfloat16
    assert probe.val_dtypes == {expected}
