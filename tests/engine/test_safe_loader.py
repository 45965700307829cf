"""Local checkpoints load in torch's safe mode; anything else is refused
with a message naming the file."""
import collections
import pickle

import numpy as np
import pytest
import torch
from mmengine.runner import CheckpointLoader

import mmclip4clip  # noqa: F401  (registers the safe loader)


class NotAllowed:
    """A class no allow-list names."""


def test_tensors_and_numpy_scalars_load(tmp_path):
    path = tmp_path / 'ok.pth'
    torch.save({'state_dict': collections.OrderedDict(w=torch.ones(2)),
                'meta': {'epoch': 3, 'loss': np.float64(0.5)}}, path)
    ckpt = CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert torch.equal(ckpt['state_dict']['w'], torch.ones(2))
    assert ckpt['meta']['loss'] == 0.5


def test_pickled_object_is_refused_naming_file_and_global(tmp_path):
    path = tmp_path / 'bad.pth'
    torch.save({'state_dict': {}, 'meta': {'x': NotAllowed()}}, path)
    with pytest.raises(pickle.UnpicklingError) as info:
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    message = str(info.value)
    assert str(path) in message and 'refused' in message
    assert 'could execute code' in message and 'NotAllowed' in message


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'nope.pth'))
