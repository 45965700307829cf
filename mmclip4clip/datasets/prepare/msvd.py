"""MSVD (Chen and Dolan, ACL 2011) in the splits CLIP4Clip uses (1,200
train, 100 val, 670 test videos; from collaborative-experts).

Input (``root``), as in CLIP4Clip's ``msvd_data.zip``::

    raw-captions.pkl   {video_id: [[token, ...], ...]}: tokenised captions
    train_list.txt     one video id a line (also val_list.txt, test_list.txt)

Output: ``msvd_{train,val,test}.json``, each video with all its captions
(tokens joined by spaces, as CLIP4Clip does). Videos are ``<video_id>.avi``
in one folder, the original archive's names.
"""
from __future__ import annotations

import pickle
from pathlib import Path

from .common import (
    SourceFormatError,
    Split,
    clean_caption,
    read_lines,
    require_file,
    write_dataset,
)

CAPTIONS = 'raw-captions.pkl'
SPLITS = ('train', 'val', 'test')


def read_captions(path: Path) -> dict:
    """The pickled caption dict (a file you downloaded: pickle runs code)."""
    with open(path, 'rb') as f:
        try:
            captions = pickle.load(f)
        except Exception as err:
            raise SourceFormatError(f'{path}: cannot unpickle ({err})') \
                from err
    if not isinstance(captions, dict):
        raise SourceFormatError(f'{path}: expected a dict video_id -> '
                                f'captions, got {type(captions).__name__}')
    return captions


def video_captions(captions: dict, video_id: str, path: Path) -> list[str]:
    """The captions of one video, each token list joined by spaces."""
    entry = captions[video_id]
    if not isinstance(entry, (list, tuple)) or not entry:
        raise SourceFormatError(f'{path}, video {video_id}: expected a '
                                'non-empty list of token lists')
    joined = []
    for i, tokens in enumerate(entry):
        where = f'{path}, video {video_id}, caption {i}'
        if not isinstance(tokens, (list, tuple)) or not all(
                isinstance(token, str) for token in tokens):
            raise SourceFormatError(f'{where}: expected a list of tokens')
        joined.append(clean_caption(' '.join(tokens), where))
    return joined


def build_msvd_splits(root: str | Path) -> list[Split]:
    """Parse MSVD's files under ``root`` (see the module docstring)."""
    lists = {name: require_file(root, f'{name}_list.txt') for name in SPLITS}
    captions_path = require_file(root, CAPTIONS)
    captions = read_captions(captions_path)
    splits = []
    for name, path in lists.items():
        records, seen = [], set()
        for line, text in read_lines(path):
            video_id = text.strip()
            if video_id in seen:
                raise SourceFormatError(f'{path}, line {line}: video '
                                        f'{video_id} is listed twice')
            seen.add(video_id)
            if video_id not in captions:
                raise SourceFormatError(f'{path}, line {line}: video '
                                        f'{video_id} is not in {CAPTIONS}')
            records.append(dict(
                video=f'{video_id}.avi',
                captions=video_captions(captions, video_id, captions_path),
                video_id=video_id))
        splits.append(Split(name, f'msvd_{name}.json', records))
    return splits


def prepare_msvd(root: str | Path, out_dir: str | Path,
                 video_dir: str | Path | None = None) -> list[Split]:
    """Write MSVD's annotation files to ``out_dir``, the records pointed
    at the videos under ``video_dir`` if given (:func:`~.common.write_dataset`);
    returns the splits as written."""
    return write_dataset(build_msvd_splits(root), out_dir, video_dir)
