"""MSR-VTT (Xu et al., CVPR 2016) in CLIP4Clip's splits.

Input (``root``), as in CLIP4Clip's ``msrvtt_data.zip``::

    MSRVTT_data.json          {"sentences": [{"video_id", "caption", ...}]}
    MSRVTT_train.9k.csv       column video_id: the 9,000 training videos
    MSRVTT_train.7k.csv       column video_id: the 6,513 training videos
    MSRVTT_JSFUSION_test.csv  columns key, vid_key, video_id, sentence:
                              the 1,000 (video, sentence) pairs of 1k-A

Output: ``msrvtt_train_9k.json`` and ``msrvtt_train_7k.json`` (each video
with all its captions, in the order of MSRVTT_data.json) and
``msrvtt_test_1k.json`` (one record per pair). Videos are
``<video_id>.mp4`` in one folder, the file names CLIP4Clip's loader opens.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .common import (
    SourceFormatError,
    Split,
    clean_caption,
    load_json,
    read_csv,
    require_file,
    write_dataset,
)

DATA_JSON = 'MSRVTT_data.json'
TRAIN_CSVS = {'train_9k': 'MSRVTT_train.9k.csv',
              'train_7k': 'MSRVTT_train.7k.csv'}
TEST_CSV = 'MSRVTT_JSFUSION_test.csv'


def video_file(video_id: str) -> str:
    return f'{video_id}.mp4'


def read_sentences(path: Path) -> dict[str, list[str]]:
    """Captions of each video id, in file order."""
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get('sentences'),
                                                    list):
        raise SourceFormatError(f'{path}: expected an object with a '
                                '"sentences" list')
    captions: dict[str, list[str]] = defaultdict(list)
    for i, item in enumerate(data['sentences']):
        where = f'{path}, sentences[{i}]'
        if not isinstance(item, dict) or not isinstance(
                item.get('video_id'), str):
            raise SourceFormatError(f'{where}: expected an object with '
                                    '"video_id" and "caption"')
        captions[item['video_id']].append(
            clean_caption(item.get('caption'), where))
    return captions


def train_split(name: str, path: Path, captions: dict[str, list[str]]
                ) -> Split:
    """The videos listed in ``path`` with all their captions."""
    records, seen = [], set()
    for line, row in read_csv(path, ['video_id']):
        video_id = row['video_id'].strip()
        if video_id in seen:  # CLIP4Clip filters sentences by membership
            continue
        seen.add(video_id)
        if video_id not in captions:
            raise SourceFormatError(f'{path}, line {line}: video {video_id} '
                                    f'has no caption in {DATA_JSON}')
        records.append(dict(video=video_file(video_id),
                            captions=captions[video_id], video_id=video_id))
    return Split(name, f'msrvtt_{name}.json', records)


def test_split(path: Path) -> Split:
    """1k-A: one record per (video, sentence) row of the JSFusion file."""
    records, lines = [], {}
    for line, row in read_csv(path, ['video_id', 'sentence']):
        video_id = row['video_id'].strip()
        if video_id in lines:
            raise SourceFormatError(
                f'{path}, line {line}: video {video_id} already paired on '
                f'line {lines[video_id]}; 1k-A pairs each video once')
        lines[video_id] = line
        records.append(dict(
            video=video_file(video_id),
            captions=[clean_caption(row['sentence'], f'{path}, line {line}')],
            video_id=video_id))
    return Split('test_1k', 'msrvtt_test_1k.json', records)


def build_msrvtt_splits(root: str | Path) -> list[Split]:
    """Parse MSR-VTT's files under ``root`` (see the module docstring)."""
    paths = {name: require_file(root, filename)
             for name, filename in [('data', DATA_JSON), *TRAIN_CSVS.items(),
                                    ('test', TEST_CSV)]}
    captions = read_sentences(paths['data'])
    return [*(train_split(name, paths[name], captions) for name in TRAIN_CSVS),
            test_split(paths['test'])]


def prepare_msrvtt(root: str | Path, out_dir: str | Path,
                   video_dir: str | Path | None = None) -> list[Split]:
    """Write MSR-VTT's annotation files to ``out_dir``, the records pointed
    at the videos under ``video_dir`` if given (:func:`~.common.write_dataset`);
    returns the splits as written."""
    return write_dataset(build_msrvtt_splits(root), out_dir, video_dir)
