"""Frame selection of CLIP4Clip (docs/data_preparation.md#frame-sampling).

Frames are taken at ``feature_framerate`` per second, the way the original
code reads them with OpenCV: the frame rate is truncated to an integer
``fps``; for every second ``s`` from the start to the end (inclusive) of the
clip or segment, the frames ``int(s * fps) + k * (fps // feature_framerate)``
for ``k < feature_framerate``, stopping at the end of the video. Then at most
``max_frames`` are kept by ``slice_framepos`` and reordered by
``frame_order``. Only these frames are decoded afterwards.
"""
from __future__ import annotations

import numpy as np
from mmcv.transforms import BaseTransform

from mmclip4clip.registry import TRANSFORMS


def sample_frame_indices(total_frames: int,
                         avg_fps: float,
                         feature_framerate: int = 1,
                         start: float | None = None,
                         end: float | None = None) -> np.ndarray:
    """Indices of the frames read at ``feature_framerate`` frames a second.

    Args:
        total_frames: number of frames in the video.
        avg_fps: the video's frame rate; truncated to an integer as OpenCV's
            reader does in the original code.
        feature_framerate: frames taken per second. The original asserts it
            is at most the video's frame rate; we take every frame instead.
        start, end: segment in seconds; ``end`` is clipped to the duration.

    Returns:
        int64 array of increasing frame indices (possibly empty).
    """
    fps = int(avg_fps)
    if fps < 1:
        raise ValueError(f'video frame rate {avg_fps} is below 1 fps')
    if feature_framerate < 1:
        raise ValueError(f'feature_framerate must be >= 1, '
                         f'got {feature_framerate}')
    duration = (total_frames + fps - 1) // fps  # seconds, rounded up
    start_sec, end_sec = 0, duration
    if start is not None:
        start_sec = max(start, 0)
        end_sec = duration if end is None else min(end, duration)
    interval = max(fps // feature_framerate, 1)
    offsets = np.arange(0, fps, interval)[:feature_framerate]  # [K]
    seconds = np.arange(start_sec, end_sec + 1)  # [S]
    bases = (seconds * fps).astype(np.int64)  # int(sec * fps)
    inds = (bases[:, None] + offsets[None, :]).reshape(-1)  # [S * K]
    return inds[inds < total_frames]


def slice_frames(inds: np.ndarray, max_frames: int,
                 slice_framepos: int) -> np.ndarray:
    """Keep at most ``max_frames``: 0 = head, 1 = tail, 2 = uniform."""
    n = len(inds)
    if n <= max_frames:
        return inds
    if slice_framepos == 0:
        return inds[:max_frames]
    if slice_framepos == 1:
        return inds[-max_frames:]
    if slice_framepos == 2:
        return inds[np.linspace(0, n - 1, num=max_frames, dtype=int)]
    raise ValueError(f'slice_framepos must be 0, 1 or 2, got {slice_framepos}')


def order_frames(inds: np.ndarray, frame_order: int,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """0 = as decoded, 1 = reversed, 2 = shuffled."""
    if frame_order == 0:
        return inds
    if frame_order == 1:
        return inds[::-1].copy()
    if frame_order == 2:
        # numpy's global generator: mmengine seeds it in every worker.
        return (rng or np.random).permutation(inds)
    raise ValueError(f'frame_order must be 0, 1 or 2, got {frame_order}')


@TRANSFORMS.register_module()
class SampleFramesByRate(BaseTransform):
    """Choose the frames to decode, CLIP4Clip's way
    (docs/data_preparation.md#frame-sampling).

    Required keys: ``total_frames``, ``avg_fps`` (set by ``AVInit``),
    optional ``start`` / ``end`` (seconds). Added keys: ``frame_inds``
    (for ``AVDecode``), ``max_frames`` (for padding at packing time).

    Args:
        max_frames: T, frames per video after slicing; shorter videos are
            padded later.
        feature_framerate: frames taken per second.
        slice_framepos: 0 = first T, 1 = last T, 2 = T spread uniformly.
        frame_order: 0 = as decoded, 1 = reversed, 2 = shuffled.
    """

    def __init__(self, max_frames: int = 12, feature_framerate: int = 1,
                 slice_framepos: int = 2, frame_order: int = 0) -> None:
        if slice_framepos not in (0, 1, 2):
            raise ValueError(
                f'slice_framepos must be 0, 1 or 2, got {slice_framepos}')
        if frame_order not in (0, 1, 2):
            raise ValueError(f'frame_order must be 0, 1 or 2, got {frame_order}')
        self.max_frames = max_frames
        self.feature_framerate = feature_framerate
        self.slice_framepos = slice_framepos
        self.frame_order = frame_order

    def transform(self, results: dict) -> dict:
        inds = sample_frame_indices(results['total_frames'],
                                    results['avg_fps'],
                                    self.feature_framerate,
                                    results.get('start'), results.get('end'))
        if len(inds) == 0:
            raise ValueError(
                f'no frame to sample: {results["total_frames"]} frames at '
                f'{results["avg_fps"]} fps, segment '
                f'{results.get("start")}..{results.get("end")} s')
        inds = slice_frames(inds, self.max_frames, self.slice_framepos)
        results['frame_inds'] = order_frames(inds, self.frame_order)
        results['max_frames'] = self.max_frames
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(max_frames={self.max_frames}, '
                f'feature_framerate={self.feature_framerate}, '
                f'slice_framepos={self.slice_framepos}, '
                f'frame_order={self.frame_order})')
