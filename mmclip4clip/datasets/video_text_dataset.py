"""Video-text retrieval dataset on mmclip4clip's annotation format
(:mod:`mmclip4clip.datasets.annotations`: a JSON list of records, one per
video, with ``video``, ``captions`` and an optional segment and id).

Training (``test_mode=False``) yields one sample per (video, caption);
evaluation (``test_mode=True``) yields one sample per video carrying all its
captions, so the evaluation loop encodes each video and each caption once.

Broken videos (missing, unreadable, no frame to sample) are errors naming the
file and the record, so a run never trains or evaluates on a video it could
not read. ``skip_broken=True`` skips them instead, loudly:

* missing files are dropped when the annotations are loaded (both modes);
* training: a sample whose video fails to load (an error in the pipeline's
  loading stage, up to its ``*Decode`` transform) is skipped with a warning
  naming the file and the error (once per file and process), counted in
  ``skipped``, and mmengine fetches a random other sample instead. Every
  skip, in whichever DataLoader worker, is also appended to ``skip_record``
  (:class:`SkipRecord`), from which ``SkipSummaryHook`` logs how many
  samples were replaced, of which files and why, per epoch and at the end
  of training;
* evaluation: every video is opened once at start-up (first and last frame
  decoded, the sampler must take a frame) and broken ones are removed from
  the gallery, with a warning listing them; ``skipped`` holds them for the
  end-of-run log. A video that passes this probe but fails later is still an
  error: a test video is never dropped in the middle of a run. Set it on the
  val/test dataset itself; metrics then cover fewer videos than the
  benchmark, so do not report them as the benchmark's.

``tools/data/check_dataset.py`` finds all of these before a run.
"""
from __future__ import annotations

import json
import logging
import os
import os.path as osp
import shutil
import tempfile
import weakref
from collections import defaultdict

from mmengine.dataset import BaseDataset
from mmengine.logging import print_log

from mmclip4clip.registry import DATASETS

from .annotations import load_annotations
from .check import frames_issue, probe_video


def _remove_folder(folder: str, owner: int) -> None:
    if os.getpid() == owner:  # not from a forked worker's copy
        shutil.rmtree(folder, ignore_errors=True)


class SkipRecord:
    """The samples a training dataset skipped, in all the processes that
    load it.

    The ``skipped`` dict of a dataset is per process: DataLoader workers are
    separate processes, so the main process never sees their skips. Each
    process (the main one, every worker, forked or spawned) appends one JSON
    line per skipped sample to its own file in a temporary folder made when
    the dataset is built, before any worker starts; :meth:`read` adds them
    up. The folder goes when the record is dropped in the process that made
    it.
    """

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix='mmclip4clip-skipped-')
        weakref.finalize(self, _remove_folder, self.folder, os.getpid())

    def add(self, filename: str, error: str, samples: int,
            dropped: bool) -> None:
        """Record ``samples`` skipped samples of ``filename``: ``dropped``
        from the dataset when it was loaded, or replaced by random others
        while training."""
        line = json.dumps(dict(file=filename, error=error, samples=samples,
                               dropped=dropped)) + '\n'
        # One small append per line, to this process's own file.
        with open(osp.join(self.folder, f'{os.getpid()}.jsonl'), 'a',
                  encoding='utf-8') as f:
            f.write(line)

    def read(self) -> dict[str, dict]:
        """``{file: {'error', 'samples', 'dropped'}}`` over all processes
        so far (the first error seen for a file)."""
        files: dict[str, dict] = defaultdict(
            lambda: dict(error='', samples=0, dropped=False))
        for name in sorted(os.listdir(self.folder)):
            with open(osp.join(self.folder, name), encoding='utf-8') as f:
                for line in f:
                    if not line.endswith('\n'):
                        break  # being written right now: next read
                    entry = json.loads(line)
                    summary = files[entry['file']]
                    summary['error'] = summary['error'] or entry['error']
                    summary['samples'] += entry['samples']
                    summary['dropped'] = entry['dropped']
        return dict(files)


@DATASETS.register_module()
class VideoTextDataset(BaseDataset):
    """Videos with captions, for training and retrieval evaluation.

    Args:
        ann_file: annotation file (format in the module docstring).
        data_prefix: ``dict(video=DIR)``, the folder video paths are under.
        pipeline: transforms from a record to the model's inputs.
        test_mode: one sample per video with all its captions (True) or
            one sample per caption (False).
        skip_broken: skip broken videos with a warning instead of failing
            (module docstring); ``skipped`` maps each to its error, in this
            process; in training ``skip_record`` holds the skips of all
            processes.
        **kwargs: further :class:`mmengine.dataset.BaseDataset` arguments.
    """

    def __init__(self, ann_file: str, data_prefix: dict | None = None,
                 pipeline: list = (), test_mode: bool = False,
                 skip_broken: bool = False, **kwargs) -> None:
        self.skip_broken = skip_broken
        # filename -> why it was skipped; per process (data loader workers
        # keep their own copy during training).
        self.skipped: dict[str, str] = {}
        self.num_skipped = 0  # skipped samples, a file may count many times
        # Made before any DataLoader worker starts, so that all share it.
        self.skip_record = (SkipRecord() if skip_broken and not test_mode
                            else None)
        super().__init__(ann_file=ann_file,
                         data_prefix=data_prefix or dict(video=''),
                         pipeline=list(pipeline), test_mode=test_mode,
                         **kwargs)

    def load_data_list(self) -> list[dict]:
        data_list = []
        for index, rec in enumerate(load_annotations(self.ann_file)):
            filename = osp.join(self.data_prefix['video'], rec['video'])
            if not osp.isfile(filename):
                message = (f'{self.ann_file}, record {index}: video file '
                           f'{filename} does not exist')
                if not self.skip_broken:
                    raise FileNotFoundError(message)
                self._skip(filename, message, count=1 if self.test_mode
                           else len(rec['captions']), dropped=True)
                continue
            info = dict(filename=filename, video_id=rec['video_id'],
                        start=rec['start'], end=rec['end'],
                        record_index=index)
            if self.test_mode:
                data_list.append(dict(info, captions=rec['captions']))
            else:
                data_list.extend(dict(info, captions=[caption])
                                 for caption in rec['captions'])
        return data_list

    def filter_data(self) -> list[dict]:
        """With ``skip_broken`` in test mode, drop the videos that do not
        open or give no frame, before the evaluation starts."""
        if not (self.skip_broken and self.test_mode):
            return self.data_list
        feature_framerate = next(
            (t.feature_framerate for t in self.pipeline.transforms
             if hasattr(t, 'feature_framerate')), 1)
        kept = []
        for info in self.data_list:
            probe = probe_video(info['filename'])
            issue = None if probe.category else frames_issue(
                probe, feature_framerate, info['start'], info['end'])
            if probe.category or (issue and issue.category == 'too_short'):
                self._skip(info['filename'],
                           f'{probe.category or issue.category}: '
                           f'{probe.detail or issue.detail}')
            else:
                kept.append(info)
        if self.skipped:
            print_log(f'{self.ann_file}: skip_broken removed '
                      f'{len(self.skipped)} test video(s); metrics cover '
                      f'{len(kept)} videos', logger='current',
                      level=logging.WARNING)
        return kept

    def _loading_stage(self) -> int:
        """Transforms up to the first ``*Decode`` one read the video."""
        names = [type(t).__name__ for t in self.pipeline.transforms]
        return next((i + 1 for i, name in enumerate(names)
                     if name.endswith('Decode')), len(names))

    def _skip(self, filename: str, error: str, count: int = 1,
              dropped: bool = False) -> None:
        """Warn (once per file) and count a skipped video: ``count`` samples
        ``dropped`` from the dataset, or replaced while training."""
        self.num_skipped += count
        if self.skip_record is not None:
            self.skip_record.add(filename, error, count, dropped)
        if filename not in self.skipped:
            self.skipped[filename] = error
            print_log(f'skip_broken: skipping video {filename} '
                      f'({len(self.skipped)} skipped so far): {error}',
                      logger='current', level=logging.WARNING)

    def prepare_data(self, idx: int):
        """Run the pipeline; a failure names the video and the record.

        With ``skip_broken`` in training, a failure to load the video
        returns None, and mmengine fetches another sample.
        """
        data = self.get_data_info(idx)
        filename, record = data['filename'], data['record_index']
        loading = self._loading_stage()
        for position, transform in enumerate(self.pipeline.transforms):
            try:
                data = transform(data)
            except Exception as err:
                error = f'{type(err).__name__}: {err}'
                if self.skip_broken and not self.test_mode \
                        and position < loading:
                    self._skip(filename, f'{type(transform).__name__}: '
                               f'{error}')
                    return None
                raise RuntimeError(
                    f'cannot load video {filename} ({self.ann_file}, '
                    f'record {record}) in {type(transform).__name__}: '
                    f'{error}') from err
            if data is None:
                return None
        return data

    def skip_summary(self) -> str:
        """One line for the end-of-run log: how many videos were skipped."""
        if not self.skipped:
            return f'{self.ann_file}: no video skipped'
        return (f'{self.ann_file}: skip_broken skipped '
                f'{len(self.skipped)} video(s) ({self.num_skipped} '
                f'samples): {", ".join(sorted(self.skipped))}')
