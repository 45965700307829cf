"""The ``indexing`` section: how fast ``tools/index_videos.py`` builds an
index with 1 process and with 2 (``torchrun --standalone``, gloo, as
``tools/dist_index.sh`` starts them), on clips of the built-in synthetic
dataset (64 px, 4 s at 10 fps) with the synthetic config's tiny model
(random weights drawn from seed 0, saved as a checkpoint so that every
process has the same).

Each run is the tool as a user starts it, timed from outside; a second run
on the finished index (nothing left to encode) times what every run pays
whatever the number of videos (imports, model, the process group, listing
the folder), so ``encode_videos_per_s`` = videos / (build - that). Per
configuration: ``processes`` x ``threads`` (torch's intra-op threads, set
through ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``). 2 processes of 1 thread
against 1 process of 1 thread is the scaling of the distributed split; on a
2-core machine 1 process of 2 threads is the fair single-process figure
(2 processes of 2 threads each would only oversubscribe the cores). FFmpeg's
decoding threads follow the CPUs the process may use, not these settings.
The 2-process index must equal the 1-process one bit for bit
(``same_index``).
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from itertools import cycle, islice
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
from mmengine.config import Config

from mmclip4clip.apis import init_retriever, load_index
from mmclip4clip.datasets.synthetic import (
    COMBINATIONS,
    render_clip_and_place,
    write_mp4,
)

REPO = Path(__file__).resolve().parents[3]
TOOL = REPO / 'tools/index_videos.py'
CONFIG = REPO / ('configs/retrieval/clip4clip/'
                 'clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb.py')
# The synthetic dataset's clips (tools/data/make_synthetic_dataset.py).
CLIP_SIZE, CLIP_FPS, CLIP_SECONDS = 64, 10, 4
BATCH_SIZE = 8  # index_videos.py's default


def synthetic_clips(out_dir: Path, num: int, seed: int = 0) -> Path:
    """``num`` clips of the synthetic dataset's kind in ``out_dir`` (made
    once), every (colour, shape, motion) in turn."""
    done = out_dir / f'.complete-{num}-{seed}'
    if done.is_file():
        return out_dir
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    combos = islice(cycle(COMBINATIONS), num)
    for i, (colour, shape, motion) in enumerate(combos):
        frames, _ = render_clip_and_place(
            colour, shape, motion, np.random.default_rng([seed, i]),
            CLIP_SIZE, CLIP_FPS * CLIP_SECONDS)
        write_mp4(frames, out_dir / f'{i:05d}_{colour}_{shape}_{motion}.mp4',
                  CLIP_FPS)
    done.touch()
    return out_dir


def fixed_model(path: Path) -> Path:
    """The synthetic config's model, seed-0 weights, saved as
    tools/train.py saves a checkpoint."""
    torch.manual_seed(0)
    model = init_retriever(Config.fromfile(str(CONFIG)))
    torch.save(dict(meta=dict(seed=0), state_dict=model.state_dict()), path)
    return path


def _index_command(processes: int, checkpoint: Path, videos: Path,
                   index: Path) -> list[str]:
    tool = [str(TOOL), str(CONFIG), str(checkpoint), str(videos), str(index),
            '--batch-size', str(BATCH_SIZE)]
    if processes == 1:
        return [sys.executable, *tool]
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone',
            f'--nproc_per_node={processes}', *tool, '--launcher', 'pytorch']


def _timed_run(command: list[str], threads: int, cwd: Path) -> tuple[float,
                                                                       dict]:
    """Wall seconds of ``command`` and the counts its summary line gives."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    start = perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1800)
    seconds = perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f'{" ".join(command)} failed '
                           f'({proc.returncode}): {proc.stderr[-2000:]}')
    summary = [line for line in proc.stdout.splitlines()
               if line.startswith('added=')]
    counts = dict(item.split('=') for item in summary[-1].split())
    return seconds, {key: int(value) for key, value in counts.items()}


def index_build_rate(work_dir: Path, clips: int, repeats: int,
                     configurations: tuple[tuple[int, int], ...],
                     startup: bool = True) -> dict:
    """The ``indexing`` section (see the module docstring):
    ``configurations`` are (processes, threads per process), the first the
    one every other index is compared with; without ``startup`` no rerun
    times the start-up (``startup_s`` and ``encode_videos_per_s`` are
    None)."""
    videos = synthetic_clips(work_dir / 'index-clips', clips)
    checkpoint = fixed_model(work_dir / 'index-model.pth')
    rows, first = [], None
    for processes, threads in configurations:
        index = work_dir / f'index-{processes}p{threads}t'
        command = _index_command(processes, checkpoint, videos, index)
        builds, startups = [], []
        for _ in range(repeats):
            shutil.rmtree(index, ignore_errors=True)
            seconds, counts = _timed_run(command, threads, work_dir)
            if counts['encoded'] != clips or counts['total'] != clips:
                raise RuntimeError(f'{index}: {counts}, not {clips} videos')
            builds.append(seconds)
            if startup:
                seconds, counts = _timed_run(command, threads, work_dir)
                if counts['encoded'] != 0:
                    raise RuntimeError(f'{index}: a rerun encoded {counts}')
                startups.append(seconds)
        build = statistics.median(builds)
        fixed = statistics.median(startups) if startups else None
        built = load_index(index)
        if first is None:
            first = built
        rows.append(dict(
            processes=processes, threads_per_process=threads, videos=clips,
            build_s=build, builds_s=builds, startup_s=fixed,
            startups_s=startups, videos_per_s=clips / build,
            encode_videos_per_s=(clips / (build - fixed)
                                 if fixed is not None and build > fixed
                                 else None),
            same_index=bool(
                [v['path'] for v in built.videos]
                == [v['path'] for v in first.videos]
                and np.array_equal(built.embeddings, first.embeddings))))
        shutil.rmtree(index)
    return dict(clips=f'{CLIP_SIZE} px, {CLIP_SECONDS} s at {CLIP_FPS} fps',
                config=CONFIG.name, batch_size=BATCH_SIZE,
                cpus=len(os.sched_getaffinity(0)), runs=rows)
