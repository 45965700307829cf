"""Check a dataset's annotations and videos before a long run.

Every video is opened once with PyAV (the data pipeline's reader, ``AVInit``),
in parallel, and every record and caption is checked the way the dataset and
its pipeline will use them. Categories (errors make the check fail):

errors
    ``annotation_file``: the annotation file is missing or not a JSON list.
    ``bad_record``: a record the dataset would refuse (missing ``video``,
    bad ``start``/``end``, unknown key, duplicate ``video_id``).
    ``missing``: the video file does not exist.
    ``empty``: zero-length: the file has 0 bytes, or it opens with 0 frames.
    ``unreadable``: the decoder cannot open it, it lacks frames its container
    declares (a file cut short: the pipeline's reader refuses it too, with
    the same check, :func:`~.transforms.loading.missing_data`), or its first
    and last frames do not decode; with ``full_decode`` every frame is
    decoded. Whatever decoder the pipeline uses, files are checked with
    ours: decord, for one, reads a Matroska or AVI file cut short as a
    shorter clip.
    ``too_short``: the frame sampler (:func:`sample_frame_indices`, at the
    pipeline's ``feature_framerate``) takes no frame for the record: a
    frame rate under 1 fps, or a segment starting after the video's end.
    ``empty_caption``: a caption that is empty, blank or not a string.

warnings
    ``segment_past_end``: a segment ends more than ``SEGMENT_SLACK`` seconds
    after the video does; frames are only taken up to the video's end.
    (Ends rounded up to the next second, as in ActivityNet, are normal.)
    ``long_caption``: more than ``max_words - 2`` tokens, so the end is cut
    off when tokenised. Tokens come from the pipeline's tokenizer when it can
    be loaded, else whitespace-separated words are counted (fewer than BPE
    tokens: a lower bound).
"""
from __future__ import annotations

import os.path as osp
from collections import Counter
from dataclasses import dataclass, field

from mmclip4clip.utils.config import type_name
from mmclip4clip.utils.parallel import map_in_processes

from .annotations import AnnotationError, parse_record, read_records
from .transforms.loading import VideoFrames
from .transforms.sampling import sample_frame_indices

ERRORS = ('annotation_file', 'bad_record', 'missing', 'empty', 'unreadable',
          'too_short', 'empty_caption')
WARNINGS = ('segment_past_end', 'long_caption')
SEGMENT_SLACK = 1.0  # seconds


@dataclass(frozen=True)
class CheckTarget:
    """One annotation file with its video folder and the pipeline settings
    that decide which frames and how many tokens are used."""

    ann_file: str
    video_root: str
    feature_framerate: int = 1
    max_words: int = 32
    tokenizer: str | None = None
    splits: tuple[str, ...] = ()  # config splits using it, for the report


@dataclass
class VideoProbe:
    """What opening one video found; ``category`` is None when it is fine."""

    num_frames: int = 0
    fps: float = 0.0
    category: str | None = None
    detail: str = ''

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


@dataclass
class Issue:
    category: str
    path: str  # the video, or the annotation file
    detail: str
    record: int | None = None

    def __str__(self) -> str:
        where = '' if self.record is None else f'record {self.record}: '
        return f'{where}{self.path}: {self.detail}'


@dataclass
class SplitReport:
    target: CheckTarget
    num_records: int = 0
    num_videos: int = 0
    num_captions: int = 0
    token_count: str = 'whitespace words'
    issues: list[Issue] = field(default_factory=list)

    def counts(self) -> Counter:
        return Counter(issue.category for issue in self.issues)

    @property
    def num_errors(self) -> int:
        return sum(1 for issue in self.issues if issue.category in ERRORS)


def _message(err: Exception, filename: str = '') -> str:
    """First line of an error, with its type, less a leading file name
    (the report names the file)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ''
    if filename:
        text = text.removeprefix(f'{filename}: ')
    return f'{type(err).__name__}: {text}'


def probe_video(filename: str, full_decode: bool = False) -> VideoProbe:
    """Open and index ``filename`` as the pipeline does; decode its first and
    last frame (every frame with ``full_decode``)."""
    if not osp.isfile(filename):
        return VideoProbe(category='missing', detail='no such file')
    if osp.getsize(filename) == 0:
        return VideoProbe(category='empty', detail='0 bytes')
    try:
        reader = VideoFrames(filename, num_threads=1)
    except Exception as err:
        return VideoProbe(category='unreadable',
                          detail=f'cannot open: {_message(err, filename)}')
    with reader:
        num_frames, fps = len(reader), reader.fps
        if num_frames == 0:
            return VideoProbe(0, fps, 'empty', 'no frames')
        try:
            if full_decode:
                for begin in range(0, num_frames, 32):
                    reader.get(range(begin, min(begin + 32, num_frames)))
            else:
                reader.get([0, num_frames - 1])
        except Exception as err:
            return VideoProbe(num_frames, fps, 'unreadable',
                              f'{num_frames} frames indexed, decoding fails: '
                              f'{_message(err, filename)}')
    return VideoProbe(num_frames, fps)


def _probe_job(args: tuple[str, bool]) -> VideoProbe:
    return probe_video(*args)


def probe_videos(filenames: list[str], workers: int = 1,
                 full_decode: bool = False,
                 progress: bool = False) -> dict[str, VideoProbe]:
    """:func:`probe_video` over ``filenames``, ``workers`` processes at a
    time; a worker that dies is an error (not hidden)."""
    jobs = [(name, full_decode) for name in filenames]
    results = map_in_processes(
        _probe_job, jobs, workers,
        progress=f'Opening {len(jobs)} videos' if progress else None)
    return dict(zip(filenames, results))


def frames_issue(probe: VideoProbe, feature_framerate: int,
                 start: float | None, end: float | None) -> Issue | None:
    """``too_short`` or ``segment_past_end`` for one record of a readable
    video (path left empty for the caller), or None."""
    try:
        inds = sample_frame_indices(probe.num_frames, probe.fps,
                                    feature_framerate, start, end)
    except ValueError as err:
        return Issue('too_short', '', str(err))
    if len(inds) == 0:
        return Issue('too_short', '',
                     f'segment {start}..{end} s starts at or after the video\'s end '
                     f'({probe.num_frames} frames, {probe.duration:.2f} s)')
    if end is not None and end > probe.duration + SEGMENT_SLACK:
        return Issue('segment_past_end', '',
                     f'segment ends at {end} s, the video at '
                     f'{probe.duration:.2f} s')
    return None


def _load_records(target: CheckTarget, report: SplitReport) -> list:
    """The raw JSON records, or [] with an ``annotation_file`` issue."""
    try:
        return read_records(target.ann_file)
    except OSError as err:
        detail = f'{type(err).__name__}: {err}'
    except AnnotationError as err:
        # The decoder's error as it is, or why the JSON is not a list.
        cause = err.__cause__
        detail = (f'{type(cause).__name__}: {cause}' if cause is not None
                  else str(err).removeprefix(f'{target.ann_file}: '))
    report.issues.append(Issue('annotation_file', target.ann_file, detail))
    return []


def _check_record(record: object, index: int, target: CheckTarget,
                  report: SplitReport) -> dict | None:
    """Record-level issues; the parsed record (empty captions dropped) when
    its video and segment can still be checked, else None."""
    where = f'{target.ann_file}, record {index}'
    captions = record.get('captions') if isinstance(record, dict) else None
    if isinstance(captions, str):
        captions = [captions]
    valid = None
    if isinstance(captions, list) and captions:
        valid = [c for c in captions if isinstance(c, str) and c.strip()]
        for caption in captions:
            if not (isinstance(caption, str) and caption.strip()):
                report.issues.append(Issue(
                    'empty_caption', target.ann_file,
                    f'empty or non-string caption {caption!r}', index))
    # Validate the rest as the dataset does, without the empty captions.
    probe = dict(record, captions=valid or ['-']) \
        if isinstance(record, dict) and valid is not None else record
    try:
        parsed = parse_record(probe, where)
    except AnnotationError as err:
        message = str(err).removeprefix(f'{where}: ').removeprefix(where)
        report.issues.append(Issue('bad_record', target.ann_file,
                                   message.strip(' :'), index))
        video = record.get('video') if isinstance(record, dict) else None
        if not isinstance(video, str) or not video:
            return None
        return dict(video=video, captions=valid or [], start=None, end=None,
                    video_id=None)
    parsed['captions'] = valid
    return parsed


def _count_tokens(target: CheckTarget, captions: list[str],
                  report: SplitReport) -> list[int]:
    """Tokens per caption with the target's tokenizer, else words."""
    if target.tokenizer and captions:
        try:
            from .transforms.text import load_tokenizer

            tokenizer = load_tokenizer(target.tokenizer)
            ids = tokenizer(captions, add_special_tokens=False)['input_ids']
            report.token_count = f'tokens of {target.tokenizer}'
            return [len(row) for row in ids]
        except Exception as err:
            report.token_count = (f'whitespace words (tokenizer '
                                  f'{target.tokenizer!r} failed: '
                                  f'{_message(err)[:160]})')
    return [len(caption.split()) for caption in captions]


def check_target(target: CheckTarget,
                 probes: dict[str, VideoProbe]) -> SplitReport:
    """Check one annotation file against already probed videos
    (:func:`video_files` lists those needed)."""
    report = SplitReport(target)
    records = _load_records(target, report)
    report.num_records = len(records)
    parsed = [_check_record(r, i, target, report)
              for i, r in enumerate(records)]
    seen_ids: dict[str, int] = {}
    for index, rec in enumerate(parsed):
        if rec is None or rec['video_id'] is None:
            continue
        if rec['video_id'] in seen_ids:
            report.issues.append(Issue(
                'bad_record', target.ann_file,
                f'video_id {rec["video_id"]!r} already used by record '
                f'{seen_ids[rec["video_id"]]}', index))
        seen_ids.setdefault(rec['video_id'], index)

    reported: set[str] = set()
    videos: set[str] = set()
    captions: list[tuple[int, str]] = []
    for index, rec in enumerate(parsed):
        if rec is None:
            continue
        captions.extend((index, c) for c in rec['captions'])
        filename = osp.join(target.video_root, rec['video'])
        videos.add(filename)
        probe = probes[filename]
        if probe.category is not None:
            if filename not in reported:  # once per file, first record
                reported.add(filename)
                report.issues.append(Issue(probe.category, filename,
                                           probe.detail, index))
            continue
        issue = frames_issue(probe, target.feature_framerate, rec['start'],
                             rec['end'])
        if issue is not None:
            issue.path, issue.record = filename, index
            report.issues.append(issue)
    report.num_videos = len(videos)
    report.num_captions = len(captions)

    limit = target.max_words - 2
    counts = _count_tokens(target, [c for _, c in captions], report)
    for (index, caption), count in zip(captions, counts):
        if count > limit:
            short = caption if len(caption) <= 60 else caption[:57] + '...'
            report.issues.append(Issue(
                'long_caption', target.ann_file,
                f'{count} > {limit} tokens, cut: {short!r}', index))
    return report


def video_files(target: CheckTarget) -> list[str]:
    """The video paths an annotation file names (unreadable files: [])."""
    try:
        records = read_records(target.ann_file)
    except (OSError, AnnotationError):
        return []
    return [osp.join(target.video_root, r['video']) for r in records
            if isinstance(r, dict) and isinstance(r.get('video'), str)
            and r['video']]


def check_targets(targets: list[CheckTarget], workers: int = 1,
                  full_decode: bool = False,
                  progress: bool = False) -> list[SplitReport]:
    """Check every target, opening each distinct video once in all."""
    filenames = sorted({name for t in targets for name in video_files(t)})
    probes = probe_videos(filenames, workers, full_decode, progress)
    return [check_target(target, probes) for target in targets]


def _dataset_targets(cfg: dict, split: str) -> list[CheckTarget]:
    """Targets of a dataset config, unwrapping Concat/Repeat-style datasets."""
    if cfg.get('datasets') is not None:
        return [t for sub in cfg['datasets']
                for t in _dataset_targets(sub, split)]
    if cfg.get('dataset') is not None:
        return _dataset_targets(cfg['dataset'], split)
    if cfg.get('ann_file') is None:
        return []
    root = cfg.get('data_root') or ''
    video_root = (cfg.get('data_prefix') or {}).get('video', '')
    kwargs = {}
    for transform in cfg.get('pipeline') or []:
        if type_name(transform) == 'SampleFramesByRate':
            kwargs['feature_framerate'] = transform.get('feature_framerate', 1)
        elif type_name(transform) == 'TokenizeCaptions':
            kwargs['tokenizer'] = transform.get('tokenizer')
            kwargs['max_words'] = transform.get('max_words', 32)
    return [CheckTarget(osp.join(root, cfg['ann_file']),
                        osp.join(root, video_root), splits=(split, ),
                        **kwargs)]


def targets_from_config(cfg) -> list[CheckTarget]:
    """The train/val/test datasets of an mmengine config; splits that share
    an annotation file, video folder and settings are checked once."""
    merged: dict[tuple, CheckTarget] = {}
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader')
        if not loader or loader.get('dataset') is None:
            continue
        for target in _dataset_targets(loader['dataset'], split):
            key = (osp.abspath(target.ann_file), osp.abspath(target.video_root),
                   target.feature_framerate, target.max_words,
                   target.tokenizer)
            if key in merged:
                old = merged[key]
                target = CheckTarget(**{**old.__dict__,
                                        'splits': old.splits + (split, )})
            merged[key] = target
    return list(merged.values())
