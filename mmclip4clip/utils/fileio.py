"""Write files so that a reader never sees half of one.

Every output of the package (checkpoints, score dumps, video indexes,
annotation files, re-encoded videos) goes through a temporary file in the
destination folder that is renamed over the real name only once it is
complete: a crash, a full disk or a kill leaves the previous file (or none),
never a partial one under the real name. (The synthetic dataset is a folder:
it is swapped in by two renames of its own, ``datasets/synthetic.py``.)

The temporary file is created like ``open(path, 'w')`` would create it
(mode 0666 less the umask), not like ``tempfile.mkstemp`` (always 0600), so
results stay readable by whoever the umask says may read them.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _temp_name(path: Path) -> Path:
    return path.with_name(f'.{path.name}.{os.getpid()}.'
                          f'{secrets.token_hex(4)}.tmp')


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike,
                rerun_overwrites: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when
    the block ends without an error, delete it otherwise.

    For writers that need a file name (``np.save``, ``torch.save``, video
    encoders). The temporary file exists (empty, with the umask's mode)
    when the block starts, so its permissions are the usual ones even if
    the writer replaces it.

    The temporary's name is unique (``.NAME.<pid>.<random>.tmp``), so
    processes writing the same file do not clash. With
    ``rerun_overwrites`` it is always ``.NAME.part``, truncated if there:
    for a file only one process writes, in jobs meant to be killed and
    started again (re-encoding a video tree), where a killed run's leftover
    is then overwritten by the next rather than piling up.
    """
    path = Path(path)
    if rerun_overwrites:
        tmp = path.with_name(f'.{path.name}.part')
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    else:
        tmp = _temp_name(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    os.close(os.open(tmp, flags, 0o666))
    try:
        yield tmp
        with open(tmp, 'rb+') as f:  # the data is on disk before the rename
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = 'wb',
                 **open_kwargs) -> Iterator[IO]:
    """``open(path, mode)`` that replaces ``path`` only once the block has
    written everything (see the module docstring).

    ``mode`` is ``'wb'`` or ``'w'``; ``open_kwargs`` go to :func:`open`
    (e.g. ``encoding='utf-8'``).
    """
    if mode not in ('w', 'wb'):
        raise ValueError(f'atomic_write writes whole files: mode must be '
                         f"'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
        f.flush()
