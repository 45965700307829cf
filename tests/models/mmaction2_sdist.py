"""The mmaction2 1.2.0 source distribution, for tests that run its models.

The PyPI wheel of mmaction2 1.2.0 cannot ``import mmaction.models``; the
sdist holds the same package's sources, so a test process can import the
model modules it needs from there. Where the archive comes from, first that
applies:

1. ``$MMACTION2_SDIST``, a path to ``mmaction2-1.2.0.tar.gz``;
2. the cache, ``$XDG_CACHE_HOME/mmclip4clip`` (default
   ``~/.cache/mmclip4clip``);
3. ``pip download`` from the package index into that cache.

The archive must have the published sha256; it is extracted once into the
cache (into a temporary folder renamed when complete).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

NAME = 'mmaction2-1.2.0'
SHA256 = 'b06e8bb4c3df1f56878fb7a97649c0e97f11d133087ea73446432bb29fcace98'


class SdistError(RuntimeError):
    """The sdist could not be obtained or is not the published file."""


def cache_dir() -> Path:
    root = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(root) / 'mmclip4clip'


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _download(cache: Path) -> Path:
    """``pip download`` the sdist into ``cache``; the archive's path."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, '-m', 'pip', 'download', 'mmaction2==1.2.0',
               '--no-deps', '--no-binary', ':all:', '-d', tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=600)
        archive = Path(tmp) / f'{NAME}.tar.gz'
        if proc.returncode != 0 or not archive.is_file():
            raise SdistError(
                f'could not download the mmaction2 1.2.0 sdist ({" ".join(cmd)}'
                f' exited {proc.returncode}); set MMACTION2_SDIST to a local '
                f'{NAME}.tar.gz. pip said:\n{proc.stdout[-2000:]}'
                f'{proc.stderr[-2000:]}')
        target = cache / archive.name
        os.replace(archive, target)
    return target


def sdist_archive() -> Path:
    """The verified ``mmaction2-1.2.0.tar.gz`` (see the module docstring)."""
    given = os.environ.get('MMACTION2_SDIST')
    if given:
        archive = Path(given)
        if not archive.is_file():
            raise SdistError(f'MMACTION2_SDIST={given} is not a file')
    else:
        archive = cache_dir() / f'{NAME}.tar.gz'
        if not archive.is_file():
            archive = _download(cache_dir())
    digest = _sha256(archive)
    if digest != SHA256:
        raise SdistError(f'{archive} has sha256 {digest}, not the published '
                         f'{SHA256} of {NAME}.tar.gz')
    return archive


def mmaction2_source() -> Path:
    """The extracted sdist: the folder that holds ``mmaction/models``."""
    archive = sdist_archive()
    root = cache_dir() / f'{NAME}-{SHA256[:12]}'
    if not (root / 'mmaction' / 'models').is_dir():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix='.extract-'))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter='data')
            try:
                os.replace(tmp / NAME, root)
            except OSError:  # extracted meanwhile by another process
                if not (root / 'mmaction' / 'models').is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root
