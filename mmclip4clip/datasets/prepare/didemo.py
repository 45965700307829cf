"""DiDeMo (Hendricks et al., ICCV 2017) as CLIP4Clip uses it: video-paragraph
retrieval, all descriptions of a video joined into one caption.

Input (``root``): LocalizingMoments' ``train_data.json`` and
``test_data.json`` (``val_data.json`` too if there): lists of
``{"video": file name, "description": str, "times": [[s, e], ...], ...}``
with times in 5-second chunks, one pair per annotator. Optional
``{train,val,test}_list.txt`` (collaborative-experts' lists, which CLIP4Clip
reads) keep only the videos they name, as CLIP4Clip does; they give the
paper's split sizes.

Output: ``didemo_{train,val,test}.json``, one record per video with the
paragraph of its descriptions (in file order) over ``0 .. 31`` s: CLIP4Clip
sets that segment for every video rather than read each duration
(annotation stopped at 30 s). The frame reader clips the end to the video's
length, so shorter videos are read whole. ``sentence_level=True`` also
writes ``didemo_{split}_sentences.json``: one record per description with
CLIP4Clip's moment, ``mean(starts) * 5 .. (mean(ends) + 1) * 5`` s.

Videos: the ``video`` names of the json files (``<...>.m4v``, ``.mov``,
``.mp4``, ...), as CLIP4Clip opens them. The AWS copies that
LocalizingMoments' script downloads are named ``<video>.mp4``, so give
``video_dir``: each video is then looked up under its name, its name plus
an extension, or its stem with any extension.
"""
from __future__ import annotations

from numbers import Real
from pathlib import Path

from .common import (
    SourceFormatError,
    Split,
    clean_caption,
    load_json,
    paragraph_splits,
    read_lines,
    require_file,
    write_dataset,
)

SPLITS = ('train', 'val', 'test')
OPTIONAL = ('val',)
CHUNK_SECONDS = 5
PARAGRAPH_END = 31  # seconds; CLIP4Clip's dataloader_didemo_retrieval.py


def video_names(video: str) -> list[str]:
    """The json name (also as the stem of ``<name>.mp4``), then its stem."""
    return [video, Path(video).stem]


def moment(times: object, where: str) -> tuple[float, float]:
    """CLIP4Clip's segment of a description: the annotators' mean chunks."""
    if not (isinstance(times, list) and times and all(
            isinstance(pair, (list, tuple)) and len(pair) == 2
            and all(isinstance(t, Real) and not isinstance(t, bool)
                    for t in pair) for pair in times)):
        raise SourceFormatError(f'{where}: "times" must be a non-empty list '
                                f'of [start, end] chunks, got {times!r}')
    start = sum(pair[0] for pair in times) / len(times) * CHUNK_SECONDS
    end = (sum(pair[1] for pair in times) / len(times) + 1) * CHUNK_SECONDS
    if not 0 <= start < end:
        raise SourceFormatError(f'{where}: "times" {times} give the segment '
                                f'{start}..{end} s')
    return start, end


def read_list(path: Path) -> set[str]:
    return {text.strip() for _, text in read_lines(path)}


def read_split(name: str, path: Path, keep: set[str] | None,
               sentence_level: bool) -> list[Split]:
    """The paragraph split (and the sentence-level one if asked)."""
    data = load_json(path)
    if not isinstance(data, list):
        raise SourceFormatError(f'{path}: expected a list of annotations')
    texts: dict[str, list[str]] = {}
    sentences = []
    for i, item in enumerate(data):
        where = f'{path}, item {i}'
        if not isinstance(item, dict) or not isinstance(
                item.get('video'), str) or not item['video'].strip():
            raise SourceFormatError(f'{where}: expected an object with a '
                                    '"video" name')
        video = item['video'].strip()
        caption = clean_caption(item.get('description'), where)
        if keep is not None and video not in keep:
            continue
        texts.setdefault(video, []).append(caption)
        if sentence_level:  # the paragraph protocol ignores "times"
            start, end = moment(item.get('times'), where)
            sentences.append(dict(
                video=video, captions=[caption], start=start, end=end,
                video_id=f'{video}#{len(texts[video]) - 1}'))
    paragraphs = [dict(video=video, captions=[' '.join(captions)], start=0,
                       end=PARAGRAPH_END, video_id=video)
                  for video, captions in texts.items()]
    return paragraph_splits('didemo', name, paragraphs,
                            sentences if sentence_level else None)


def build_didemo_splits(root: str | Path, sentence_level: bool = False
                        ) -> list[Split]:
    """Parse DiDeMo's files under ``root`` (see the module docstring)."""
    root = Path(root)
    splits = []
    for name in SPLITS:
        if name in OPTIONAL and not (root / f'{name}_data.json').is_file():
            continue
        path = require_file(root, f'{name}_data.json')
        list_path = root / f'{name}_list.txt'
        keep = read_list(list_path) if list_path.is_file() else None
        splits.extend(read_split(name, path, keep, sentence_level))
    return splits


def prepare_didemo(root: str | Path, out_dir: str | Path,
                   video_dir: str | Path | None = None,
                   sentence_level: bool = False) -> list[Split]:
    """Write DiDeMo's annotation files to ``out_dir``, the records pointed
    at the videos under ``video_dir`` if given (:func:`~.common.write_dataset`);
    returns the splits as written."""
    return write_dataset(build_didemo_splits(root, sentence_level), out_dir,
                         video_dir, video_names)
