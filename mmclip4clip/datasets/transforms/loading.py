"""Open a video and decode only the sampled frames, with PyAV (FFmpeg).

:class:`AVInit` indexes the video once without decoding it: the presentation
time of every frame and which frames are keyframes. :class:`AVDecode` visits
the wanted frames in time order, seeks only when the keyframe before the next
wanted frame lies ahead of where decoding stands, and converts just the
wanted frames to RGB. FFmpeg decodes with several threads, sharing this
process's CPUs among the DataLoader's workers.

Frame ``i`` is the frame with the ``i``-th smallest presentation time, and
frames are converted to RGB by the same FFmpeg routine decord uses, so the
pixels are those of mmaction2's ``DecordInit`` + ``DecordDecode`` (tested on
camera clips); FFmpeg decodes with its own frame threads here (decord's
decoder gains little from threads; the README's performance section
compares the two). mmaction2's ``PyAVDecode`` instead decodes
and converts every frame up to the last wanted one.

A file that cannot be read whole raises :class:`BrokenVideoError` naming it:
FFmpeg cannot open or decode it, it has no video stream, or it lacks data its
container declares (:func:`missing_data`: a file cut short still opens when
its index comes first, and would otherwise read as a shorter clip).
"""
from __future__ import annotations

import os
import threading
import weakref

import numpy as np
from mmcv.transforms import BaseTransform

from mmclip4clip.registry import TRANSFORMS


def decode_threads() -> int:
    """This process's CPUs divided among the DataLoader's workers (at
    least 1): each worker decodes with its share, the main process with all
    of them when there are no workers."""
    import torch.utils.data

    cpus = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
            else os.cpu_count() or 1)
    info = torch.utils.data.get_worker_info()
    return max(1, cpus // (info.num_workers if info is not None else 1))


class BrokenVideoError(RuntimeError):
    """A video file that cannot be read whole; the message starts with the
    file name."""


def _declared_duration(container, stream) -> float | None:
    """Seconds the container declares for ``stream``: the stream's duration,
    its ``DURATION`` tag (Matroska / WebM), or the file's duration when the
    stream is the file's only one (another stream may last longer)."""
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get('DURATION')
    if tag:
        try:
            hours, minutes, seconds = tag.split(':')
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            return None
    if container.duration and len(container.streams) == 1:
        return container.duration / 1e6
    return None


def missing_data(container, stream, num_packets: int,
                 span: float | None, corrupt_packet: int | None,
                 file_size: int) -> str | None:
    """Why the packets demuxed from ``stream`` fall short of what the
    container says it holds, or None when nothing is missing.

    Uses only what indexing already has (no decoding): ``num_packets``
    demuxed, their ``span`` in seconds (first timestamp to the end of the
    last frame; None without timestamps), the first packet the demuxer
    flagged incomplete, and the container's own account of its frames:

    * the demuxer's index, when it lists frames that were never read (an MP4
      index, read first, lists every frame: also those past the end of a
      file cut short);
    * else the frame count the container declares (AVI), except in MP4,
      whose count includes frames an edit list leaves out of the index;
    * without a count, the duration it declares (Matroska, WebM), with 1.5
      frames of slack for a last frame whose duration the packets do not
      carry: a cut losing only the last frame or two there goes unseen.
    """
    findings = []
    entries = stream.index_entries
    if num_packets < len(entries):
        findings.append(f'{num_packets} of the {len(entries)} frames its '
                        'index lists are in the file')
        end = max(entry.pos + entry.size for entry in entries)
        if end > file_size:
            findings.append(f'its index places frame data up to byte {end}, '
                            f'the file has {file_size} bytes')
    declared = stream.frames
    if (declared and num_packets < declared and not findings
            and 'mp4' not in container.format.name.split(',')):
        findings.append(f'{num_packets} of the {declared} frames its '
                        'container declares are in the file')
    if corrupt_packet is not None:
        findings.append(f'frame data of packet {corrupt_packet} is cut off')
    if not declared and span is not None:
        duration = _declared_duration(container, stream)
        rate = stream.average_rate or stream.guessed_rate
        slack = 1.5 / float(rate) if rate else 0.1
        if duration is not None and span < duration - slack:
            findings.append(f'its frames span {span:.2f} s of the '
                            f'{duration:.2f} s its container declares')
    if not findings:
        return None
    return 'cut short or damaged: ' + '; '.join(findings)


def _ffmpeg_message(err: Exception) -> str:
    """An FFmpeg error's reason, without the file name PyAV appends."""
    return getattr(err, 'strerror', None) or str(err)


_local = threading.local()

# Videos open in this process, and, in a forked child, those inherited from
# the parent: kept for good, because freeing one there would wait forever
# for decoder threads that exist only in the parent.
_open_videos: weakref.WeakSet = weakref.WeakSet()
_inherited: list = []


def _keep_inherited_videos() -> None:
    _inherited.extend((video.container, video.stream)
                      for video in _open_videos)


os.register_at_fork(after_in_child=_keep_inherited_videos)


def _to_rgb(frame) -> np.ndarray:
    """[H, W, 3] uint8 RGB of a decoded frame.

    ``VideoFrame.to_ndarray`` builds a new FFmpeg scaler, with its own thread
    pool, for every frame, which costs more than the conversion; this
    keeps one single-threaded scaler per thread and process instead. (A
    scaler with threads must never cross a fork: its threads stay behind in
    the parent and a DataLoader worker waits for them forever.)
    """
    key = os.getpid()
    if getattr(_local, 'pid', None) != key:
        from av.video.reformatter import VideoReformatter

        _local.pid, _local.reformatter = key, VideoReformatter()
    return _local.reformatter.reformat(frame, format='rgb24',
                                       threads=1).to_ndarray()


class VideoFrames:
    """An open video and its frame index.

    Args:
        filename: a local video file.
        num_threads: FFmpeg decoding threads; ``None``: :func:`decode_threads`.
    """

    def __init__(self, filename: str, num_threads: int | None = None) -> None:
        self.filename = filename
        self.num_threads = num_threads or decode_threads()
        self._open()
        try:
            self._index()
        except Exception:
            self.close()
            raise

    def _index(self) -> None:
        """Read every packet's timestamp (no decoding) and check that none
        of the frames the container declares is missing."""
        import av

        pts, keys = [], []
        corrupt, count, end = None, 0, None
        # The duration check needs where the frames end (absent a count).
        track_end = not self.stream.frames
        try:
            for packet in self.container.demux(self.stream):
                if packet.size == 0:
                    if packet.pos is not None:
                        count += 1  # an empty (dropped-frame) chunk, in AVI
                    continue  # else the demuxer's end-of-stream marker
                count += 1
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
                if packet.is_corrupt and corrupt is None:
                    corrupt = len(pts) - 1
                if track_end and packet.pts is not None:
                    frame_end = packet.pts + (packet.duration or 0)
                    end = frame_end if end is None else max(end, frame_end)
        except av.error.FFmpegError as err:
            raise BrokenVideoError(
                f'{self.filename}: cannot read packet {count}: '
                f'{_ffmpeg_message(err)}') from err
        span = None
        if end is not None and self.stream.time_base:
            span = float((end - min(p for p in pts if p is not None)) *
                         self.stream.time_base)
        missing = missing_data(self.container, self.stream, count, span,
                               corrupt, os.path.getsize(self.filename))
        if missing:
            raise BrokenVideoError(f'{self.filename}: {missing}')
        self.num_frames = len(pts)
        # Without a usable timestamp on every frame, frames are counted in
        # decoding output order from the start instead.
        self.pts = None
        if None not in pts and len(set(pts)) == len(pts):
            self.pts = np.sort(np.asarray(pts, dtype=np.int64))
            self.key_pts = np.sort(np.asarray(keys, dtype=np.int64))
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else 0.0

    def _open(self) -> None:
        import av

        try:
            self.container = av.open(self.filename)
        except av.error.FileNotFoundError:
            raise  # missing, not broken
        except av.error.FFmpegError as err:
            raise BrokenVideoError(f'{self.filename}: FFmpeg cannot open it: '
                                   f'{_ffmpeg_message(err)}') from err
        self._pid = os.getpid()
        _open_videos.add(self)
        if not self.container.streams.video:
            self.close()
            raise BrokenVideoError(f'{self.filename}: no video stream')
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = 'AUTO'  # frame and slice threads
        self.stream.thread_count = self.num_threads

    def __len__(self) -> int:
        return self.num_frames

    def close(self) -> None:
        """Close the file and drop the decoder, so that its threads end now
        (PyAV ends them only when the stream object is freed); not in a
        forked child: see ``_keep_inherited_videos``."""
        if self.container is not None and os.getpid() == self._pid:
            self.container.close()
            self.container = self.stream = None
            _open_videos.discard(self)

    def __enter__(self) -> 'VideoFrames':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        # An unclosed PyAV container is cyclic garbage whose decoder threads
        # run until the garbage collector frees it, possibly in a forked
        # child (which then hangs); closing breaks the cycle.
        if getattr(self, 'container', None) is not None:
            self.close()

    def _by_time(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """Decode ``wanted`` (sorted, unique) frame indices, seeking to a
        keyframe only when it lies ahead of the decoding position."""
        frames, decoded, position = {}, None, None
        for index in wanted:
            target = int(self.pts[index])
            before = np.searchsorted(self.key_pts, target, side='right') - 1
            key = int(self.key_pts[before] if before >= 0 else self.pts[0])
            if decoded is None or position < key:
                self.container.seek(key, stream=self.stream, backward=True)
                decoded = self.container.decode(self.stream)
            for frame in decoded:
                position = frame.pts
                if position is None or position > target:
                    return {}  # inexact seek or timestamps: caller falls back
                if position == target:
                    frames[index] = _to_rgb(frame)
                    break
            else:
                return {}
        return frames

    def _in_order(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """Decode from the start, counting frames in output order (reopens
        the file: some streams, e.g. raw H.264, cannot seek)."""
        frames, wanted_set = {}, set(wanted)
        self.close()
        self._open()
        for count, frame in enumerate(self.container.decode(self.stream)):
            if count in wanted_set:
                frames[count] = _to_rgb(frame)
                if len(frames) == len(wanted_set):
                    break
        return frames

    def get(self, frame_inds) -> list[np.ndarray]:
        """[H, W, 3] uint8 RGB frames at ``frame_inds`` (any order, repeats
        allowed)."""
        frame_inds = [int(i) for i in np.asarray(frame_inds).reshape(-1)]
        wanted = sorted(set(frame_inds))
        if wanted and not 0 <= wanted[0] <= wanted[-1] < self.num_frames:
            raise IndexError(f'{self.filename}: frame indices {wanted[0]}..'
                             f'{wanted[-1]} outside 0..{self.num_frames - 1}')
        import av

        try:
            frames = self._by_time(wanted) if self.pts is not None else {}
            if len(frames) < len(wanted):
                frames = self._in_order(wanted)
        except av.error.FFmpegError as err:
            raise BrokenVideoError(
                f'{self.filename}: decoding frames {wanted} of '
                f'{self.num_frames} fails: {_ffmpeg_message(err)}') from err
        missing = [i for i in wanted if i not in frames]
        if missing:
            raise BrokenVideoError(
                f'{self.filename}: frames {missing} of {self.num_frames} '
                'could not be decoded (the file may be truncated)')
        return [frames[i] for i in frame_inds]


@TRANSFORMS.register_module()
class AVInit(BaseTransform):
    """Open ``filename`` with PyAV and index its frames (no decoding).

    Required key: ``filename`` (a local file). Added keys: ``video_reader``
    (:class:`VideoFrames`), ``total_frames``, ``avg_fps``: the same values as
    mmaction2's ``DecordInit``, so it drops in for it.

    Args:
        num_threads: FFmpeg decoding threads; ``None`` shares this process's
            CPUs among the DataLoader's workers.
    """

    def __init__(self, num_threads: int | None = None) -> None:
        self.num_threads = num_threads

    def transform(self, results: dict) -> dict:
        reader = VideoFrames(results['filename'], self.num_threads)
        results['video_reader'] = reader
        results['total_frames'] = len(reader)
        results['avg_fps'] = reader.fps
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(num_threads={self.num_threads})'


@TRANSFORMS.register_module()
class AVDecode(BaseTransform):
    """Decode the frames at ``frame_inds`` and close the video.

    Required keys: ``video_reader`` (from :class:`AVInit`), ``frame_inds``.
    Added keys: ``imgs`` (list of [H, W, 3] uint8 RGB), ``original_shape``,
    ``img_shape``; ``video_reader`` is set to ``None``.
    """

    def transform(self, results: dict) -> dict:
        with results['video_reader'] as reader:
            results['video_reader'] = None
            imgs = reader.get(results['frame_inds'])
        results['imgs'] = imgs
        results['original_shape'] = imgs[0].shape[:2]
        results['img_shape'] = imgs[0].shape[:2]
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}()'
