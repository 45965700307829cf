"""Re-encode a tree of videos at a low frame rate and size
(docs/data_preparation.md#compressing-videos).

CLIP4Clip reads about one frame a second at 224 px, so decoding full-rate,
full-size videos wastes most of the data loader's time. The original code
offers an ffmpeg script that re-encodes every video at 3 fps with the
shorter side 224; :func:`compress_videos` does the same with PyAV (no ffmpeg
binary needed), in parallel, and can be rerun after an interruption.

Output: ``DST/<path relative to SRC, extension replaced by .mp4>``, H.264
(libx264, yuv420p, ``crf``), no audio, index at the front of the file
(``faststart``). Each output is written to a hidden ``.NAME.part`` file in its
folder and renamed when complete, so an output file is always a finished one;
an output at least as new as its source is skipped on the next run.

Frame rate: output frame ``k`` (at ``k / fps`` s from the first frame) is the
source frame shown at that time, i.e. the last one whose timestamp is at most
``k / fps``, up to the source's end (last timestamp plus one frame). Exact
rational timestamps, so a 10 fps source at 5 fps keeps every second frame.

Size: the shorter side becomes ``size`` (bicubic, as ffmpeg's ``scale``),
the longer side keeps the aspect ratio, rounded to an even number as
yuv420p needs. Videos whose shorter side is already at most ``size`` are not
upscaled (only rounded down to even sides): upscaling adds no information
and the data pipeline resizes anyway, so the pixels it sees stay as close as
possible to those of the original video.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from mmclip4clip.utils.fileio import atomic_path
from mmclip4clip.utils.parallel import map_in_processes

from .video_files import VIDEO_EXTENSIONS, find_videos

OUTPUT_SUFFIX = '.mp4'


@dataclass
class CompressSummary:
    """What a :func:`compress_videos` run did, as paths relative to SRC."""

    encoded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already done
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    seconds: float = 0.0


def output_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``size`` and even sides; never
    larger than the input (see the module docstring)."""
    if width < 2 or height < 2:
        raise ValueError(f'frame size {width}x{height} is too small')
    scale = min(size / min(width, height), 1.0)

    def even(side: int) -> int:
        if scale == 1.0:
            return side - side % 2  # round down: no upscaling
        return max(2, int(round(side * scale / 2)) * 2)

    return even(width), even(height)


def output_path(src_root: Path, src: Path, dst_root: Path) -> Path:
    """``dst_root / <src relative to src_root>`` with the suffix ``.mp4``."""
    return (dst_root / src.relative_to(src_root)).with_suffix(OUTPUT_SUFFIX)


def is_done(src: Path, dst: Path) -> bool:
    """A finished output (written by rename) not older than its source."""
    return dst.is_file() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns


def _resample(frames: Iterator, fps: Fraction, fallback_rate: Fraction | None
              ) -> Iterator:
    """Yield the decoded frames shown at times ``k / fps`` (module docstring).

    A frame without a timestamp gets its index over ``fallback_rate``.
    """
    period = 1 / fps
    first = prev = None
    last_time = step = None
    k = 0
    for index, frame in enumerate(frames):
        if frame.pts is not None and frame.time_base is not None:
            t = frame.pts * frame.time_base
        elif fallback_rate:
            t = Fraction(index) / fallback_rate
        else:
            raise ValueError('frames have no timestamps and the stream no '
                             'frame rate')
        if first is None:
            first = t
        t -= first
        if last_time is not None and t > last_time:
            step = t - last_time
        while prev is not None and k * period < t:
            yield prev
            k += 1
        prev, last_time = frame, max(t, last_time or 0)
    if prev is None:
        return
    # The last frame lasts one frame period of the source.
    if fallback_rate:
        step = 1 / fallback_rate
    end = last_time + (step or period)
    while k * period < end:
        yield prev
        k += 1


def compress_video(src: str | Path, dst: str | Path, fps: float = 3,
                   size: int = 224, crf: int = 23, preset: str = 'medium',
                   threads: int = 1) -> int:
    """Re-encode one video (module docstring); return the frames written.

    Writes ``.NAME.part`` beside ``dst`` and renames it to ``dst`` only when
    complete (:func:`~mmclip4clip.utils.atomic_path`, a rerun overwriting a
    killed run's leftover); the temporary file is removed on failure.
    """
    import av

    src, dst = Path(src), Path(dst)
    if size < 2 or size % 2:
        raise ValueError(f'size must be even and >= 2, got {size}')
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f'fps must be positive, got {fps}')
    dst.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with atomic_path(dst, rerun_overwrites=True) as tmp, \
            av.open(str(src)) as source:
        if not source.streams.video:
            raise ValueError('no video stream')
        in_stream = source.streams.video[0]
        in_stream.thread_type = 'AUTO'
        in_stream.codec_context.thread_count = threads
        source_rate = in_stream.average_rate or in_stream.guessed_rate
        with av.open(str(tmp), 'w', format='mp4',
                     options={'movflags': 'faststart'}) as out:
            stream = None
            for frame in _resample(source.decode(in_stream), rate,
                                   source_rate):
                if stream is None:
                    width, height = output_size(frame.width,
                                                frame.height, size)
                    stream = out.add_stream(
                        'libx264', rate=rate,
                        options={'crf': str(crf), 'preset': preset,
                                 'threads': str(threads)})
                    stream.width, stream.height = width, height
                    stream.pix_fmt = 'yuv420p'
                small = frame.reformat(width, height, 'yuv420p',
                                       interpolation='BICUBIC')
                small.pts, small.time_base = written, 1 / rate
                out.mux(stream.encode(small))
                written += 1
            if stream is None:
                raise ValueError('no frame could be decoded')
            out.mux(stream.encode())  # flush delayed frames
    return written


def _compress_job(job: tuple[str, str, dict]) -> tuple[str, str | None]:
    """Pool task: (src, error message or None)."""
    src, dst, kwargs = job
    try:
        compress_video(src, dst, **kwargs)
    except Exception as err:  # reported in the failure list, run goes on
        return src, f'{type(err).__name__}: {err}'
    return src, None


def compress_videos(src_root: str | Path, dst_root: str | Path,
                    fps: float = 3, size: int = 224, workers: int = 1,
                    crf: int = 23, preset: str = 'medium',
                    extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
                    force: bool = False, progress: bool = True
                    ) -> CompressSummary:
    """Re-encode every video under ``src_root`` into ``dst_root`` (module
    docstring), ``workers`` at a time; skip finished outputs unless
    ``force``. Failures are collected, not raised.
    """
    start = time.perf_counter()
    src_root, dst_root = Path(src_root).resolve(), Path(dst_root).resolve()
    if not src_root.is_dir():
        raise FileNotFoundError(f'source folder {src_root} does not exist')
    if dst_root == src_root or src_root in dst_root.parents:
        raise ValueError(f'the output folder {dst_root} must not be inside '
                         f'the source folder {src_root}')
    summary = CompressSummary()
    jobs, claimed = [], {}
    for src in find_videos(src_root, extensions):
        rel = str(src.relative_to(src_root))
        dst = output_path(src_root, src, dst_root)
        if dst in claimed:  # e.g. a.avi and a.mp4 in one folder
            summary.failed.append(
                (rel, f'same output {dst} as {claimed[dst]}; rename one'))
            continue
        claimed[dst] = rel
        if not force and is_done(src, dst):
            summary.skipped.append(rel)
        else:
            jobs.append((str(src), str(dst), {}))
    # One thread per process when the pool fills the machine.
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1))
    kwargs = dict(fps=fps, size=size, crf=crf, preset=preset,
                  threads=threads)
    jobs = [(src, dst, kwargs) for src, dst, _ in jobs]

    results = map_in_processes(
        _compress_job, jobs, workers,
        progress=(f'Encoding {len(jobs)} videos ({len(summary.skipped)} '
                  'already done)') if progress else None,
        # A worker died (e.g. a crash): its files and the unfinished ones.
        on_crash=lambda job, err: (
            job[0], f'worker failed: {type(err).__name__}: {err}'))
    for src, error in results:
        rel = str(Path(src).relative_to(src_root))
        if error is None:
            summary.encoded.append(rel)
        else:
            summary.failed.append((rel, error))
    summary.encoded.sort()
    summary.failed.sort()
    summary.seconds = time.perf_counter() - start
    return summary
