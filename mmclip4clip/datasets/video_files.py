"""Which files under a folder are videos: one rule for every tool that
walks a video tree (``tools/data/compress_videos.py``, ``tools/index_videos.py``).

A video is a file whose extension is one of ``VIDEO_EXTENSIONS`` (any case).
Hidden files and folders, whose names start with ``.``, are skipped: they
are never a dataset's videos but the temporaries of writers (compress's
``.NAME.part``, the atomic writes' ``.NAME.<pid>.<hex>.tmp``), macOS's
``._NAME.mp4`` resource forks, or tool folders such as ``.git``; encoding one
would at best fail, at worst index a half-written file. Folders reached
through a symbolic link are not entered (no cycles, nothing outside the
tree); linked files are listed.
"""
from __future__ import annotations

import os
from pathlib import Path

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v', '.mpg',
                    '.mpeg', '.flv', '.wmv', '.3gp', '.ts')


def find_videos(root: str | os.PathLike,
                extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[Path]:
    """The videos under ``root`` (module docstring), as ``root / relative``
    paths sorted by their relative POSIX path."""
    root = Path(root)
    extensions = tuple(e.lower() for e in extensions)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith('.')]
        found.extend(Path(folder) / name for name in files
                     if not name.startswith('.')
                     and name.lower().endswith(extensions))
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())
