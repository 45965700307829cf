"""ActivityNet Captions (Krishna et al., ICCV 2017) as CLIP4Clip uses it:
video-paragraph retrieval on train (10,009 videos) and val_1 (4,917).

Input (``root``): the dataset's caption files, ``train.json`` and
``val_1.json``: ``{video_id: {"duration": s, "timestamps": [[s, e], ...],
"sentences": [...]}}``.

Output: ``activitynet_train.json`` and ``activitynet_val_1.json``, one record
per video whose one caption is the paragraph of all its sentences joined
by spaces, with the segment ``0 .. ceil(duration)``: frames are taken over
the whole video (docs/data_preparation.md#benchmarks; CLIP4Clip's
``_get_captions_single``). ``sentence_level=True`` also writes
``activitynet_{train,val_1}_sentences.json``: one record per sentence with its
own segment.

Videos: ``<video_id>.mp4`` with the ids as in the json (``v_QOlSCBRmfWY``),
the names of the official archives. Those hold ``.mp4``, ``.mkv`` and
``.webm`` files, and CLIP4Clip's loader expects the names without ``v_``
(it strips the first two characters and accepts any extension), so give
``video_dir``: each video is then looked up under either name with any
extension, and the records point at the files found.
"""
from __future__ import annotations

import math
from numbers import Real
from pathlib import Path

from .common import (
    SourceFormatError,
    Split,
    clean_caption,
    default_video_names,
    load_json,
    paragraph_splits,
    require_file,
    write_dataset,
)

FILES = {'train': 'train.json', 'val_1': 'val_1.json'}


def video_names(video: str) -> list[str]:
    """``v_<id>.mp4``, then ``v_<id>`` or ``<id>`` with any extension."""
    names = default_video_names(video)
    stem = names[-1]
    if stem.startswith('v_'):
        names.append(stem[2:])
    return names


def _number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) \
        and math.isfinite(value)


def sentence_segment(pair: object, duration: float, where: str
                     ) -> tuple[int, int]:
    """A sentence's segment in whole seconds, rounded outwards as
    CLIP4Clip's sentence-level code does (floor start, ceil end). Reversed
    pairs are swapped, the start is kept inside the video and an empty
    segment is widened to 1 s (CLIP4Clip's reader does the last two)."""
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2
            and all(_number(t) for t in pair)):
        raise SourceFormatError(f'{where}: expected a timestamp [start, end]'
                                f', got {pair!r}')
    low, high = sorted(pair)
    start = min(max(math.floor(low), 0), math.ceil(duration) - 1)
    end = max(math.ceil(high), start + 1)
    return start, end


def read_split(name: str, path: Path, sentence_level: bool) -> list[Split]:
    """The paragraph split (and the sentence-level one if asked)."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise SourceFormatError(f'{path}: expected an object video_id -> '
                                'annotation')
    paragraphs, sentences = [], []
    for video_id, ann in data.items():
        where = f'{path}, video {video_id}'
        if not isinstance(ann, dict):
            raise SourceFormatError(f'{where}: expected an object')
        duration = ann.get('duration')
        if not _number(duration) or duration <= 0:
            raise SourceFormatError(f'{where}: "duration" must be a positive '
                                    f'number, got {duration!r}')
        texts = ann.get('sentences')
        if not isinstance(texts, list) or not texts:
            raise SourceFormatError(f'{where}: "sentences" must be a '
                                    'non-empty list')
        captions = [clean_caption(text, f'{where}, sentence {i}')
                    for i, text in enumerate(texts)]
        video = f'{video_id}.mp4'
        paragraphs.append(dict(video=video, captions=[' '.join(captions)],
                               start=0, end=math.ceil(duration),
                               video_id=video_id))
        if not sentence_level:
            continue
        stamps = ann.get('timestamps')
        if not isinstance(stamps, list) or len(stamps) != len(texts):
            raise SourceFormatError(f'{where}: "timestamps" must list one '
                                    f'[start, end] per sentence ({len(texts)})')
        for i, (caption, pair) in enumerate(zip(captions, stamps)):
            start, end = sentence_segment(pair, duration,
                                          f'{where}, timestamp {i}')
            sentences.append(dict(video=video, captions=[caption],
                                  start=start, end=end,
                                  video_id=f'{video_id}#{i}'))
    return paragraph_splits('activitynet', name, paragraphs,
                            sentences if sentence_level else None)


def build_activitynet_splits(root: str | Path, sentence_level: bool = False
                             ) -> list[Split]:
    """Parse ActivityNet Captions' files under ``root`` (module docstring)."""
    paths = {name: require_file(root, filename)
             for name, filename in FILES.items()}
    return [split for name, path in paths.items()
            for split in read_split(name, path, sentence_level)]


def prepare_activitynet(root: str | Path, out_dir: str | Path,
                        video_dir: str | Path | None = None,
                        sentence_level: bool = False) -> list[Split]:
    """Write ActivityNet Captions' annotation files to ``out_dir``, the
    records pointed at the videos under ``video_dir`` if given, by the
    official or CLIP4Clip's name (:func:`~.common.write_dataset`); returns
    the splits as written."""
    return write_dataset(build_activitynet_splits(root, sentence_level),
                         out_dir, video_dir, video_names)
