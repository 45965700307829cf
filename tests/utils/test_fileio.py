"""atomic_write / atomic_path: whole files or nothing, with the umask's mode."""
import os
import stat

import numpy as np
import pytest

from mmclip4clip.utils import atomic_path, atomic_write


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_output_mode_follows_umask_not_0600(tmp_path, umask_022):
    target = tmp_path / 'result.pkl'
    with atomic_write(target) as f:
        f.write(b'abc')
    assert target.read_bytes() == b'abc'
    assert _mode(target) == 0o644
    with atomic_path(tmp_path / 'emb.npy') as tmp:
        np.save(tmp, np.zeros(3))  # np.save writes to the given name
    assert _mode(tmp_path / 'emb.npy') == 0o644


def test_failure_keeps_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / 'index.json'
    target.write_text('old')
    with pytest.raises(OSError, match='disk full'):
        with atomic_write(target, 'w') as f:
            f.write('new, half written')
            raise OSError('disk full')
    assert target.read_text() == 'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['index.json']


def test_new_file_not_created_on_failure(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / 'epoch_1.pth'):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_append_mode_refused(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with atomic_write(tmp_path / 'x', 'ab'):
            pass


def test_rerun_overwrites_a_killed_runs_leftover_temp(tmp_path):
    """``rerun_overwrites``: the temporary is ``.NAME.part``, so a run
    started again after a kill reuses it instead of leaving another."""
    target = tmp_path / 'clip.mp4'
    (tmp_path / '.clip.mp4.part').write_bytes(b'left by a killed run')
    with atomic_path(target, rerun_overwrites=True) as tmp:
        assert tmp.name == '.clip.mp4.part' and tmp.read_bytes() == b''
        tmp.write_bytes(b'video')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['clip.mp4']
    assert target.read_bytes() == b'video'
