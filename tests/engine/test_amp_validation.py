"""``tools/train.py --amp`` validates under autocast, as documented (it used
to run validation in fp32; only tools/test.py turned autocast on).

The run is one tiny epoch with validation; a hook records the dtype that
the model's linear layers produce while validating. The same run checks what
``--amp`` saves (formerly a tools/train.py subprocess in
tests/tools/test_tools.py), and ``tools/test.py --amp`` then evaluates its
checkpoint.
"""
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner
from torch import nn

REPO = Path(__file__).resolve().parents[2]
METRIC_KEYS = {f'{d}/{m}' for d in ('t2v', 'v2t')
               for m in ('R1', 'R5', 'R10', 'MdR', 'MnR')}
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
        'val_dataloader.dataset.indices=4', 'default_hooks.checkpoint.interval=1'
    ])
    args = train.parse_args()
    cfg = train.Config.fromfile(args.config)
    train.use_amp_optimiser(cfg)  # as main() does with --amp
    train.merge_cfg_options(cfg, args.cfg_options)
    cfg = train.merge_args(cfg, args)
    runner = Runner.from_cfg(cfg)
    probe = LinearDtypeProbe()
    runner.register_hook(probe)
    runner.train()
    expected = torch.float16 if torch.cuda.is_available() else torch.bfloat16
    assert probe.val_dtypes == {expected}

    # What --amp saved: the mixed-precision wrapper in the dumped config; on
    # the CPU (bf16) no loss scaler state, and finite weights.
    work_dir = tmp_path / 'w'
    dumped = [p.read_text() for p in work_dir.glob('*.py')]
    assert dumped and "type='MixedPrecisionOptimWrapper'" in dumped[0]
    ckpt = torch.load(work_dir / 'epoch_1.pth', map_location='cpu',
                      weights_only=True)
    if not torch.cuda.is_available():
        assert 'loss_scaler' not in ckpt['optimizer']
    assert all(v.isfinite().all() for v in ckpt['state_dict'].values()
               if v.is_floating_point())

    # tools/test.py --amp on it (main() in-process; tests/tools/test_tools.py
    # runs the tool as a user does): finite scores and every metric.
    test = load_tool('tools/test.py')
    dump = tmp_path / 'amp_result.pkl'
    monkeypatch.setattr(sys, 'argv', [
        'test.py', str(CONFIG), str(work_dir / 'epoch_1.pth'), '--amp',
        '--dump', str(dump), '--work-dir', str(tmp_path / 'test_w'),
        '--cfg-options', 'test_dataloader.dataset.indices=4'])
    test.main()
    with open(dump, 'rb') as f:
        result = pickle.load(f)
    assert result['scores'].shape == (8, 4)  # 2 captions per video
    assert np.isfinite(result['scores']).all()
    assert set(result['metrics']) == METRIC_KEYS
