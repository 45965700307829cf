"""SafeCheckpointHook saves the random generators and restores them on
resume only, through torch's safe loading."""
import random
from types import SimpleNamespace

import numpy as np
import torch

from mmclip4clip.engine.hooks import SafeCheckpointHook


def draws():
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(),
            [random.random() for _ in range(3)], np.random.randn())


def fake_runner(resume: bool):
    logger = SimpleNamespace(warning=lambda msg: None)
    return SimpleNamespace(_resume=resume, _randomness_cfg=dict(seed=0),
                           logger=logger)


def test_states_round_trip_through_a_safe_checkpoint(tmp_path):
    hook = SafeCheckpointHook()
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    checkpoint = {}
    hook.before_save_checkpoint(fake_runner(False), checkpoint)
    expected = draws()
    torch.save(checkpoint, tmp_path / 'c.pth')
    loaded = torch.load(tmp_path / 'c.pth', weights_only=True)

    draws()  # move every generator on
    hook.after_load_checkpoint(fake_runner(resume=False), loaded)
    assert draws() != expected  # load_from / test: generators untouched
    hook.after_load_checkpoint(fake_runner(resume=True), loaded)
    assert draws() == expected
