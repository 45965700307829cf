"""mmclip4clip's annotation files: reading and validating them.

An annotation file is a JSON list; each record describes one video::

    {"video": "train/clip_0001.mp4",        # path under data_prefix['video']
     "captions": ["a man cooks", "..."],     # one or more (or one string)
     "start": 12.0, "end": 31.5,             # optional segment, in seconds
     "video_id": "clip_0001"}                # optional, default: "video"

Every reader of these files goes through this module: the dataset
(:func:`load_annotations`), the dataset check (:func:`read_records`, then
:func:`parse_record` one record at a time, to report every bad record rather
than stop at the first), the preparation scripts (which read back what they
wrote) and the synthetic generator's completeness test.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from numbers import Real

RECORD_KEYS = {'video', 'captions', 'start', 'end', 'video_id'}


class AnnotationError(ValueError):
    """A record of an annotation file is malformed."""


def read_records(ann_file: str | os.PathLike) -> list:
    """The records of ``ann_file`` as stored, not yet validated.

    Raises OSError (e.g. FileNotFoundError) when the file cannot be read, and
    AnnotationError naming the file when it is not UTF-8 JSON or not a list;
    the decoder's own error is its ``__cause__``.
    """
    with open(ann_file, encoding='utf-8') as f:
        try:
            records = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise AnnotationError(f'{ann_file}: not valid JSON ({err})') \
                from err
    if not isinstance(records, list):
        raise AnnotationError(f'{ann_file}: expected a JSON list of records')
    return records


def parse_record(record: object, where: str) -> dict:
    """Validate one annotation record; errors name ``where`` (file, index).

    Returns ``dict(video, captions (a list), start, end, video_id)`` with
    ``start``/``end`` None without a segment and ``video_id`` defaulting to
    the video path.
    """
    if not isinstance(record, dict):
        raise AnnotationError(f'{where}: expected an object, got '
                              f'{type(record).__name__}')
    unknown = set(record) - RECORD_KEYS
    if unknown:
        raise AnnotationError(f'{where}: unknown key(s) {sorted(unknown)}; '
                              f'allowed: {sorted(RECORD_KEYS)}')
    video = record.get('video')
    if not isinstance(video, str) or not video:
        raise AnnotationError(f'{where}: "video" must be a non-empty path')
    captions = record.get('captions')
    if isinstance(captions, str):
        captions = [captions]
    if not isinstance(captions, list) or not captions:
        raise AnnotationError(f'{where} ({video}): "captions" must be a '
                              'non-empty list of strings')
    for caption in captions:
        if not isinstance(caption, str) or not caption.strip():
            raise AnnotationError(f'{where} ({video}): empty or non-string '
                                  f'caption {caption!r}')
    start, end = record.get('start'), record.get('end')
    if (start is None) != (end is None):
        raise AnnotationError(f'{where} ({video}): give both "start" and '
                              '"end" or neither')
    if start is not None:
        if not all(isinstance(v, Real) and not isinstance(v, bool)
                   for v in (start, end)) or not 0 <= start < end:
            raise AnnotationError(f'{where} ({video}): need numbers '
                                  f'0 <= start < end, got {start}, {end}')
    return dict(video=video, captions=captions, start=start, end=end,
                video_id=str(record.get('video_id', video)))


def load_annotations(ann_file: str) -> list[dict]:
    """Read and validate an annotation file (see the module docstring):
    the parsed records, or the first error, naming file and record."""
    if not osp.isfile(ann_file):
        raise FileNotFoundError(f'annotation file {ann_file} does not exist')
    records = read_records(ann_file)
    parsed = [parse_record(r, f'{ann_file}, record {i}')
              for i, r in enumerate(records)]
    seen: dict[str, int] = {}
    for i, rec in enumerate(parsed):
        if rec['video_id'] in seen:
            raise AnnotationError(
                f'{ann_file}, record {i}: video_id {rec["video_id"]!r} '
                f'already used by record {seen[rec["video_id"]]}')
        seen[rec['video_id']] = i
    return parsed
