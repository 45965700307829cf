"""Checkpoint files are read in torch's safe mode by our own loader, with
messages that say what a bad file is and name it; importing the plugin
changes nothing about how mmengine loads other checkpoints."""
import collections
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mmclip4clip.engine.checkpoint_io import (
    FORCE_UNSAFE_ENV,
    CheckpointFileError,
    UnsafeCheckpointError,
    load_checkpoint_file,
)


class NotAllowed:
    """A class no allow-list names."""


def save_good(path) -> None:
    torch.save({'state_dict': collections.OrderedDict(w=torch.ones(300)),
                'meta': {'epoch': 3, 'loss': np.float64(0.5),
                         'hist': np.arange(3.0)}}, path)


def test_tensors_and_numpy_values_load(tmp_path):
    path = tmp_path / 'ok.pth'
    save_good(path)
    ckpt = load_checkpoint_file(path, map_location='cpu')
    assert torch.equal(ckpt['state_dict']['w'], torch.ones(300))
    assert ckpt['meta']['loss'] == 0.5
    # numpy is allowed for our call only, not left in torch's global list.
    assert np.ndarray not in torch.serialization.get_safe_globals()


def test_pickled_object_is_refused_naming_file_and_global(tmp_path,
                                                          monkeypatch):
    monkeypatch.delenv(FORCE_UNSAFE_ENV, raising=False)
    path = tmp_path / 'bad.pth'
    torch.save({'state_dict': {}, 'meta': {'x': NotAllowed()}}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint_file(path)
    message = str(info.value)
    assert str(path) in message and 'refused' in message
    assert 'could execute code' in message and 'NotAllowed' in message


class CodeRunningPayload:
    """Unpickling this runs ``os.mkdir(path)``: any code could run there."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path, )


@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'legacy'])
def test_code_running_pickle_is_refused_and_never_runs(tmp_path, monkeypatch,
                                                       zip_format):
    """torch words a blocked module (``posix``) differently from a class
    outside the allow-list; both are refusals, not corrupt files."""
    monkeypatch.delenv(FORCE_UNSAFE_ENV, raising=False)
    marker = tmp_path / 'code_ran'
    path = tmp_path / 'payload.pth'
    torch.save({'state_dict': {'w': torch.ones(2)},
                'extra': CodeRunningPayload(str(marker))}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError,
                       match=r'could execute code.*refused: posix\.mkdir'):
        load_checkpoint_file(path)
    assert not marker.exists()


def test_torch_opt_out_variable_is_honoured(tmp_path, monkeypatch):
    path = tmp_path / 'trusted.pth'
    torch.save({'meta': {'x': NotAllowed()}}, path)
    monkeypatch.setenv(FORCE_UNSAFE_ENV, '1')
    with pytest.warns(UserWarning, match=FORCE_UNSAFE_ENV):
        ckpt = load_checkpoint_file(path)
    assert isinstance(ckpt['meta']['x'], NotAllowed)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_checkpoint_file(tmp_path / 'nope.pth')


def _truncated_zip(path):
    save_good(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _truncated_legacy(path):
    torch.save({'w': torch.ones(300)}, path,
               _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize('make, says', [
    (lambda p: p.write_bytes(b''), 'is an empty file (0 bytes)'),
    (_truncated_zip, 'is a truncated or corrupt zip archive'),
    (_truncated_legacy, 'is a truncated or corrupt legacy torch checkpoint'),
    (lambda p: p.write_text('epoch_3.pth\n'),
     "is not a torch checkpoint at all: it is text, beginning 'epoch_3.pth"),
    (lambda p: p.write_bytes(bytes(range(200, 256))),
     'is not a torch checkpoint at all (it starts with bytes'),
], ids=['empty', 'truncated-zip', 'truncated-legacy', 'text', 'binary'])
def test_unreadable_files_say_what_they_are(tmp_path, make, says):
    path = tmp_path / 'epoch_3.pth'
    make(path)
    with pytest.raises(CheckpointFileError) as info:
        load_checkpoint_file(path)
    message = str(info.value)
    assert message.startswith(f'checkpoint {path} {says}'), message
    assert 'execute code' not in message


def test_importing_the_plugin_leaves_mmengine_loading_alone(tmp_path,
                                                            monkeypatch):
    """mmaction2's own Runner checkpoints hold mmengine's HistoryBuffer,
    outside any allow-list. In a fresh process, mmengine's loader treats
    them the same before and after importing the plugin (refused by torch's
    default, loaded with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1), while our
    loader refuses them (without the variable)."""
    from mmengine.logging import HistoryBuffer

    path = tmp_path / 'mmaction2_epoch_1.pth'
    torch.save({'state_dict': {'w': torch.ones(2)},
                'message_hub': {'loss': HistoryBuffer([1.0], [1])}}, path)

    # One process: mmengine alone, then the plugin imported; torch reads the
    # variable at each load, so each state is tried both ways.
    probe = textwrap.dedent(f'''
        import json, os, sys
        from mmengine.runner import CheckpointLoader

        def outcomes():
            found = {{}}
            for opt_out in (False, True):
                os.environ.pop({FORCE_UNSAFE_ENV!r}, None)
                if opt_out:
                    os.environ[{FORCE_UNSAFE_ENV!r}] = '1'
                try:
                    ckpt = CheckpointLoader.load_checkpoint(
                        {str(path)!r}, map_location='cpu')
                    found[opt_out] = [
                        'loaded', type(ckpt['message_hub']['loss']).__name__]
                except Exception as err:
                    found[opt_out] = ['refused', type(err).__name__]
            return found

        bare = outcomes()
        assert 'mmclip4clip' not in sys.modules
        import mmclip4clip  # noqa: F401
        print(json.dumps(dict(bare=bare, plugin=outcomes())))
    ''')
    env = {k: v for k, v in os.environ.items() if k != FORCE_UNSAFE_ENV}
    proc = subprocess.run([sys.executable, '-c', probe], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found['plugin'] == found['bare']
    assert found['plugin']['true'] == ['loaded', 'HistoryBuffer']
    assert found['plugin']['false'][0] == 'refused'
    monkeypatch.delenv(FORCE_UNSAFE_ENV, raising=False)
    with pytest.raises(UnsafeCheckpointError, match='HistoryBuffer'):
        load_checkpoint_file(path)
