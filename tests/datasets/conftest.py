"""Shared fixtures of the dataset tests: a small synthetic dataset and the
slow reference of CLIP4Clip's frame sampling
(docs/data_preparation.md#frame-sampling)."""
from pathlib import Path

import numpy as np
import pytest

SYNTHETIC = {
    'train_per_combo': 1,
    'test_per_combo': 1,
    'captions_per_video': 2,
    'size': 32,
    'fps': 10,
    'seconds': 2,
}


def reference_frame_indices(frame_count, avg_fps, sample_fp, start=None,
                            end=None):
    """The original CLIP4Clip OpenCV reader, written as its plain loop.

    ``start`` / ``end`` given means a segment; returns the frame indices it
    reads, in reading order, stopping at the first one past the video.
    """
    fps = int(avg_fps)
    total_duration = (frame_count + fps - 1) // fps
    start_sec, end_sec = 0, total_duration
    if start is not None:
        start_sec = start
        end_sec = min(end, total_duration)
    interval = fps // sample_fp
    if interval == 0:
        interval = 1
    inds = list(range(0, fps, interval))[:sample_fp]
    read = []
    for sec in np.arange(start_sec, end_sec + 1):
        base = int(sec * fps)
        for ind in inds:
            if base + ind >= frame_count:
                return read
            read.append(base + ind)
    return read


def reference_slice(read, max_frames, slice_framepos):
    """The original's choice of at most ``max_frames`` frames."""
    read = list(read)
    if len(read) <= max_frames:
        return read
    if slice_framepos == 0:
        return read[:max_frames]
    if slice_framepos == 1:
        return read[-max_frames:]
    picks = np.linspace(0, len(read) - 1, num=max_frames, dtype=int)
    return [read[i] for i in picks]


@pytest.fixture(scope='session')
def reference():
    """``(reference_frame_indices, reference_slice)``."""
    return reference_frame_indices, reference_slice


@pytest.fixture(scope='session')
def synthetic(tmp_path_factory) -> Path:
    """A small synthetic dataset: 90 train and 90 test clips of 32 px,
    2 s at 10 fps, 2 captions each, with its tokenizer."""
    from mmclip4clip.datasets.synthetic import make_synthetic_dataset

    out_dir = tmp_path_factory.mktemp('synthetic') / 'data'
    make_synthetic_dataset(out_dir, seed=0, progress=False, **SYNTHETIC)
    return out_dir


@pytest.fixture(scope='session')
def tokenizer(synthetic):
    from mmclip4clip.datasets.transforms import load_tokenizer

    return load_tokenizer(str(synthetic / 'tokenizer'))
