"""Section (d) of the benchmark: the data pipeline alone.

Clips are generated (moving shapes over a drifting gradient, with a little
noise, so the encoder has real work), encoded as H.264 at 30 fps with
x264's usual keyframe interval of 250 frames, then compressed to 3 fps at
224 px with :func:`mmclip4clip.datasets.compress.compress_videos`.

Both are read with the evaluation pipeline (PyAV: open, choose the frames
to use, decode only those, CLIP's bicubic resize and centre crop) through a
``DataLoader`` with 0, 1 and 2 workers, and, side by side on the same clips,
with the original code's method: OpenCV, seeking to one frame per second and
preprocessing every frame read before keeping 12.
"""
from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset

from mmclip4clip.apis.encode import VideoFileDataset, collate_as_list
from mmclip4clip.datasets.compress import compress_videos
from mmclip4clip.datasets.transforms.processing import resize_center_crop
from mmclip4clip.datasets.transforms.sampling import slice_frames


def eval_pipeline(max_frames: int = 12, size: int = 224) -> list[dict]:
    """The evaluation pipeline: PyAV, one frame a second, ``max_frames``
    spread over the video, CLIP's resize and centre crop to ``size``."""
    return [
        dict(type='AVInit'),
        dict(type='SampleFramesByRate', max_frames=max_frames,
             feature_framerate=1, slice_framepos=2, frame_order=0),
        dict(type='AVDecode'),
        dict(type='CLIPResizeCrop', size=size),
    ]


def _frames(num: int, width: int, height: int, seed: int):
    """[H, W, 3] uint8 frames of a generated clip: colour waves drifting
    across the frame, three boxes crossing it, and noise (cycled from a
    small bank, so generating costs little next to encoding)."""
    rng = np.random.default_rng(seed)
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    noise = rng.normal(0, 4, (7, height, width, 3)).astype(np.float32)
    frame = np.empty((height, width, 3), dtype=np.float32)
    for t in range(num):
        frame[..., 0] = 128 + 80 * np.sin((xs + 3 * t) / 60)
        frame[..., 1] = 128 + 80 * np.cos((ys - 2 * t) / 45)
        frame[..., 2] = 128 + 60 * np.sin((xs + ys + t) / 80)
        for k in range(3):
            x0 = int((40 + 37 * seed + 7 * t * (k + 1)) % width)
            y0 = int((30 + 90 * k + 2 * t) % height)
            frame[y0:y0 + 60, x0:x0 + 80] = (255 * (k == 0), 255 * (k == 1),
                                             255 * (k == 2))
        yield (frame + noise[t % 7]).clip(0, 255).astype(np.uint8)


def make_clip(path: Path, seconds: int = 10, fps: int = 30,
              size: tuple[int, int] = (640, 360), seed: int = 0) -> None:
    """Write one generated H.264 clip (keyframe every 250 frames)."""
    import av

    width, height = size
    with av.open(str(path), mode='w') as container:
        stream = container.add_stream(
            'libx264', rate=Fraction(fps),
            options={'crf': '23', 'preset': 'veryfast', 'g': '250'})
        stream.width, stream.height = width, height
        stream.pix_fmt = 'yuv420p'
        for image in _frames(seconds * fps, width, height, seed):
            frame = av.VideoFrame.from_ndarray(image, format='rgb24')
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def make_clips(root: Path, num: int, seconds: int = 10,
               size: tuple[int, int] = (640, 360),
               small_size: int = 224) -> tuple[list[Path], list[Path]]:
    """``num`` generated clips of ``size`` under ``root/raw`` and their
    3-fps copies (shorter side ``small_size``) under ``root/3fps``; returns
    both path lists."""
    raw, small = root / 'raw', root / '3fps'
    raw.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num):
        path = raw / f'clip{i:03d}.mp4'
        if not path.exists():
            make_clip(path, seconds=seconds, size=size, seed=i)
        paths.append(path)
    compress_videos(raw, small, fps=3, size=small_size, workers=1,
                    progress=False)
    return paths, [small / p.name for p in paths]


def read_by_seeking(path: Path, max_frames: int = 12,
                    size: int = 224) -> np.ndarray:
    """The original code's reader: OpenCV, one seek per second of video,
    every frame read resized and cropped, then ``max_frames`` kept
    (uniformly spread). Returns [T, size, size, 3] uint8 RGB."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = int(cap.get(cv2.CAP_PROP_FPS))
        duration = (frame_count + fps - 1) // fps
        frames = []
        for second in range(duration + 1):
            cap.set(cv2.CAP_PROP_POS_FRAMES, second * fps)
            ok, frame = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            frames.append(resize_center_crop(rgb, size))
    finally:
        cap.release()
    keep = slice_frames(np.arange(len(frames)), max_frames, 2)
    return np.stack([frames[i] for i in keep])


class SeekingDataset(Dataset):
    """The original reader (:func:`read_by_seeking`) as a dataset."""

    def __init__(self, paths: list[Path], max_frames: int = 12,
                 size: int = 224) -> None:
        self.paths, self.max_frames, self.size = paths, max_frames, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        return read_by_seeking(self.paths[index], self.max_frames, self.size)


def videos_per_s(dataset: Dataset, workers: int) -> float:
    """Steady-state videos/s of reading a dataset: timed from the first
    video delivered to the last, so worker start-up (paid once per run with
    persistent workers) is left out.

    Workers are forked, as a training run's loader's are on Linux: this
    section runs in a process started by forkserver or spawn, whose start
    method it inherits, and workers started that way import everything
    again (tens of seconds per loader on a small CPU)."""
    loader = DataLoader(dataset, batch_size=1, num_workers=workers,
                        collate_fn=collate_as_list,
                        multiprocessing_context='fork' if workers else None)
    start = None
    for batch in loader:
        if isinstance(batch[0], dict) and batch[0]['error'] is not None:
            raise RuntimeError(f'{dataset.paths[batch[0]["index"]]}: '
                               f'{batch[0]["error"]}')
        if start is None:
            start = time.perf_counter()
    return (len(dataset) - 1) / (time.perf_counter() - start)


def data_pipeline(work_dir: Path, num: int = 16, seconds: int = 10,
                  size: tuple[int, int] = (640, 360), frames: int = 12,
                  image_size: int = 224) -> dict:
    """(d) videos/s of the pipeline and of OpenCV seeking with 0/1/2
    workers, on ``num`` generated 30-fps clips of ``seconds`` and ``size``
    and on their 3-fps copies; ``frames`` of ``image_size`` px per video."""
    start = time.perf_counter()
    raw, small = make_clips(work_dir, num, seconds=seconds, size=size,
                            small_size=image_size)
    generate = time.perf_counter() - start
    pipeline = eval_pipeline(frames, image_size)
    rows = []
    for name, paths in ((f'30fps {size[0]}x{size[1]}', raw),
                        (f'3fps {image_size}', small)):
        for workers in (0, 1, 2):
            ours = videos_per_s(VideoFileDataset(paths, pipeline), workers)
            seek = videos_per_s(SeekingDataset(paths, frames, image_size),
                                workers)
            rows.append(dict(clips=name, workers=workers, videos_per_s=ours,
                             opencv_seek_videos_per_s=seek,
                             speedup=ours / seek))
    return dict(num_clips=num, seconds_per_clip=seconds,
                generate_seconds=generate, runs=rows)
