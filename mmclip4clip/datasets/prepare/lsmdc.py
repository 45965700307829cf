"""LSMDC (Rohrbach et al., IJCV 2017), the 2016 challenge's movie clips.

Input (``root``): the challenge's tab-separated files, no header, one
sentence a line as ``<CLIP_ID> <START_ALIGNED> <END_ALIGNED>
<START_EXTRACTED> <END_EXTRACTED> <SENTENCE>``::

    LSMDC16_annos_training.csv              ~101k clips
    LSMDC16_annos_val.csv                   ~7.4k clips
    LSMDC16_challenge_1000_publictect.csv   the 1,000 test clips

Output: ``lsmdc_train.json``, ``lsmdc_val.json``, ``lsmdc_test_1k.json``.
A clip id may carry several sentences (the challenge's README says so); they
become one record with several captions, which gives the same training
samples as CLIP4Clip's one-sample-per-line loader. No segment is recorded:
the time stamps are positions in the movie, and each clip is its own file.

Videos: ``<movie>/<clip_id>.avi``, the layout of the challenge's download
(``avi/1004_Juno/1004_Juno_00.00.32.849-00.00.35.458.avi``), where the
movie is the clip id without its trailing ``_<start>-<end>``. CLIP4Clip's
loader finds clips by file name in any sub-folder; ``--video-dir`` does too.
"""
from __future__ import annotations

import re
from pathlib import Path

from .common import (
    SourceFormatError,
    Split,
    clean_caption,
    read_lines,
    require_file,
    write_dataset,
)

FILES = {'train': 'LSMDC16_annos_training.csv',
         'val': 'LSMDC16_annos_val.csv',
         'test_1k': 'LSMDC16_challenge_1000_publictect.csv'}
NUM_FIELDS = 6
# <movie>_<hh.mm.ss.mmm>-<hh.mm.ss.mmm>, e.g. 1004_Juno_00.00.32.849-00.00.35.458
CLIP_ID = re.compile(r'(?P<movie>.+)_\d+(\.\d+)*-\d+(\.\d+)*')


def clip_video(clip_id: str, where: str) -> str:
    """``<movie>/<clip_id>.avi``."""
    match = CLIP_ID.fullmatch(clip_id)
    if match is None:
        raise SourceFormatError(f'{where}: clip id {clip_id!r} does not end '
                                'in _<start>-<end>')
    return f'{match["movie"]}/{clip_id}.avi'


def read_split(name: str, path: Path) -> Split:
    """One record per clip id, with its sentences in file order."""
    records: dict[str, dict] = {}
    for line, text in read_lines(path):
        where = f'{path}, line {line}'
        fields = text.split('\t')
        if len(fields) != NUM_FIELDS:
            raise SourceFormatError(f'{where}: expected {NUM_FIELDS} '
                                    f'tab-separated fields, got {len(fields)}')
        clip_id, sentence = fields[0].strip(), fields[-1]
        caption = clean_caption(sentence, where)
        if clip_id not in records:
            records[clip_id] = dict(video=clip_video(clip_id, where),
                                    captions=[], video_id=clip_id)
        records[clip_id]['captions'].append(caption)
    return Split(name, f'lsmdc_{name}.json', list(records.values()))


def build_lsmdc_splits(root: str | Path) -> list[Split]:
    """Parse LSMDC's files under ``root`` (see the module docstring)."""
    paths = {name: require_file(root, filename)
             for name, filename in FILES.items()}
    return [read_split(name, path) for name, path in paths.items()]


def prepare_lsmdc(root: str | Path, out_dir: str | Path,
                  video_dir: str | Path | None = None) -> list[Split]:
    """Write LSMDC's annotation files to ``out_dir``, the records pointed
    at the videos under ``video_dir`` if given (:func:`~.common.write_dataset`);
    returns the splits as written."""
    return write_dataset(build_lsmdc_splits(root), out_dir, video_dir)
