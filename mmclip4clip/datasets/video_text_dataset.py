"""Video-text retrieval dataset on mmclip4clip's annotation format.

An annotation file is a JSON list; each record describes one video::

    {"video": "train/clip_0001.mp4",        # path under data_prefix['video']
     "captions": ["a man cooks", "..."],     # one or more (or one string)
     "start": 12.0, "end": 31.5,             # optional segment, in seconds
     "video_id": "clip_0001"}                # optional, default: "video"

Training (``test_mode=False``) yields one sample per (video, caption);
evaluation (``test_mode=True``) yields one sample per video carrying all its
captions, so the evaluation loop encodes each video and each caption once.
"""
from __future__ import annotations

import json
import os.path as osp
from numbers import Real

from mmengine.dataset import BaseDataset

from mmclip4clip.registry import DATASETS

RECORD_KEYS = {'video', 'captions', 'start', 'end', 'video_id'}


class AnnotationError(ValueError):
    """A record of an annotation file is malformed."""


def parse_record(record: object, where: str) -> dict:
    """Validate one annotation record; errors name ``where`` (file, index)."""
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
    """Read and validate an annotation file (see the module docstring)."""
    if not osp.isfile(ann_file):
        raise FileNotFoundError(f'annotation file {ann_file} does not exist')
    with open(ann_file, encoding='utf-8') as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as err:
            raise AnnotationError(f'{ann_file}: not valid JSON ({err})') \
                from err
    if not isinstance(records, list):
        raise AnnotationError(f'{ann_file}: expected a JSON list of records')
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


@DATASETS.register_module()
class VideoTextDataset(BaseDataset):
    """Videos with captions, for training and retrieval evaluation.

    Args:
        ann_file: annotation file (format in the module docstring).
        data_prefix: ``dict(video=DIR)``, the folder video paths are under.
        pipeline: transforms from a record to the model's inputs.
        test_mode: one sample per video with all its captions (True) or
            one sample per caption (False).
        **kwargs: further :class:`mmengine.dataset.BaseDataset` arguments.
    """

    def __init__(self, ann_file: str, data_prefix: dict | None = None,
                 pipeline: list = (), test_mode: bool = False,
                 **kwargs) -> None:
        super().__init__(ann_file=ann_file,
                         data_prefix=data_prefix or dict(video=''),
                         pipeline=list(pipeline), test_mode=test_mode,
                         **kwargs)

    def load_data_list(self) -> list[dict]:
        data_list = []
        for index, rec in enumerate(load_annotations(self.ann_file)):
            filename = osp.join(self.data_prefix['video'], rec['video'])
            if not osp.isfile(filename):
                raise FileNotFoundError(
                    f'{self.ann_file}, record {index}: video file {filename} '
                    'does not exist')
            info = dict(filename=filename, video_id=rec['video_id'],
                        start=rec['start'], end=rec['end'],
                        record_index=index)
            if self.test_mode:
                data_list.append(dict(info, captions=rec['captions']))
            else:
                data_list.extend(dict(info, captions=[caption])
                                 for caption in rec['captions'])
        return data_list

    def prepare_data(self, idx: int):
        """Run the pipeline; a failure names the video and the record."""
        try:
            return super().prepare_data(idx)
        except Exception as err:
            info = self.get_data_info(idx)
            raise RuntimeError(
                f'cannot load video {info["filename"]} ({self.ann_file}, '
                f'record {info["record_index"]}): '
                f'{type(err).__name__}: {err}') from err
