"""Indexing at scale: tools/index_videos.py killed mid-way resumes from its
committed progress (losing at most --commit-every videos), and under
torchrun (tools/dist_index.sh, 2 gloo processes) builds the index one
process builds. "The same index" is exact: the same index.json (rows,
order, metadata) and bit-identical embeddings."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import free_port, save_fixed_model
from mmengine.config import Config

from mmclip4clip.apis import init_retriever, load_index, update_index
from mmclip4clip.apis.index import PROGRESS_DIR, shard_bounds

REPO = Path(__file__).resolve().parents[2]
TESTS_TOOLS = Path(__file__).resolve().parent
CONFIG = REPO / ('configs/retrieval/clip4clip/'
                 'clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb.py')
VIDEOS = 'data/synthetic/videos/test'
NUM_VIDEOS = 90
BATCH, COMMIT_EVERY = 8, 16


@pytest.fixture(scope='module')
def workspace(make_workspace) -> Path:
    return make_workspace('index_scale_ws')


@pytest.fixture(scope='module')
def checkpoint(workspace) -> Path:
    return save_fixed_model(workspace / 'fixed_model.pth', CONFIG)


def index_args(checkpoint: Path, index: Path) -> list[str]:
    return [str(CONFIG), str(checkpoint), VIDEOS, str(index),
            '--batch-size', str(BATCH), '--commit-every', str(COMMIT_EVERY)]


def run(cmd: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    # One thread per process, as torchrun gives each of its processes: the
    # indexes compared below are then built with the same arithmetic.
    # dist_index.sh runs the ``python`` on PATH: this one.
    environ = dict(os.environ, OMP_NUM_THREADS='1', **env,
                   PATH=f'{Path(sys.executable).parent}:{os.environ["PATH"]}')
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=environ)


def run_counted(workspace: Path, counts: Path, kill_after: int,
                args: list[str]) -> subprocess.CompletedProcess:
    """index_videos.py through the wrapper that counts encoded videos in
    ``counts`` and SIGKILLs the tool after ``kill_after`` (0: never)."""
    return run([sys.executable, str(TESTS_TOOLS / 'index_kill_wrapper.py'),
                str(counts), str(kill_after),
                str(REPO / 'tools/index_videos.py'), *args], workspace)


def summary(stdout: str) -> dict:
    line = next(s for s in stdout.splitlines() if s.startswith('added='))
    return {k: int(v) for k, v in (p.split('=') for p in line.split())}


def assert_same_index(built: Path, reference: Path) -> None:
    got, want = load_index(built), load_index(reference)
    assert got.meta == want.meta  # rows, order, sizes, durations, names
    assert got.embeddings.dtype == want.embeddings.dtype
    assert np.array_equal(got.embeddings, want.embeddings)


@pytest.fixture(scope='module')
def one_shot_index(workspace, checkpoint) -> Path:
    """The index of an uninterrupted one-process run."""
    index = workspace / 'one_shot_index'
    proc = run([sys.executable, str(REPO / 'tools/index_videos.py'),
                *index_args(checkpoint, index)], workspace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary(proc.stdout)['total'] == NUM_VIDEOS
    # stdout holds only the summary; the bar (rate, ETA) is on stderr.
    assert proc.stdout.splitlines()[0].startswith('added=')
    assert 'task/s' in proc.stderr and 'ETA' in proc.stderr
    assert not (index / PROGRESS_DIR).exists()
    return index


def test_killed_run_resumes_losing_at_most_commit_every(
        workspace, checkpoint, one_shot_index, tmp_path):
    index, counts = tmp_path / 'index', tmp_path / 'encoded.txt'
    args = index_args(checkpoint, index)
    killed = run_counted(workspace, counts, 40, args)
    assert killed.returncode == -9, killed.stderr[-3000:]
    encoded_before_kill = sum(map(int, counts.read_text().split()))
    # Nothing under the index's own names until the end; progress is kept.
    assert not (index / 'index.json').exists()
    assert not list(index.glob('embeddings-*.npy'))
    assert list((index / PROGRESS_DIR).rglob('chunk-*.json'))

    resumed = run_counted(workspace, tmp_path / 'encoded_2.txt', 0, args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    encoded_after = sum(map(int, (tmp_path / 'encoded_2.txt').read_text()
                            .split()))
    counts_line = summary(resumed.stdout)
    assert counts_line['resumed'] == NUM_VIDEOS - encoded_after
    assert 'resuming: ' in resumed.stderr
    re_encoded = encoded_before_kill + encoded_after - NUM_VIDEOS
    assert 0 < re_encoded <= COMMIT_EVERY, (encoded_before_kill,
                                            encoded_after)
    assert counts_line['added'] == counts_line['total'] == NUM_VIDEOS
    assert_same_index(index, one_shot_index)
    assert not (index / PROGRESS_DIR).exists()


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing catches it on the way out."""


def test_progress_of_another_run_is_refused_naming_the_file(
        workspace, checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(workspace)
    cfg = Config.fromfile(str(CONFIG))
    model = init_retriever(cfg, str(checkpoint))
    import mmclip4clip.apis.index as index_module
    real = index_module.encode_videos
    calls = []

    def encode_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return real(*args, **kwargs)

    index = tmp_path / 'index'
    monkeypatch.setattr(index_module, 'encode_videos', encode_then_die)
    with pytest.raises(Killed):
        update_index(model, cfg, VIDEOS, index, CONFIG, checkpoint,
                     batch_size=BATCH, commit_every=COMMIT_EVERY)
    monkeypatch.setattr(index_module, 'encode_videos', real)
    job = index / PROGRESS_DIR / 'rank0-of-1' / 'job.json'
    assert job.is_file()
    other = tmp_path / 'other.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict(x=1)), other)
    with pytest.raises(ValueError, match=f'{job}.*different fingerprint'):
        update_index(model, cfg, VIDEOS, index, CONFIG, other,
                     batch_size=BATCH)
    with pytest.raises(ValueError, match=f'{job}.*different batch_size'):
        update_index(model, cfg, VIDEOS, index, CONFIG, checkpoint,
                     batch_size=4)
    # The same run resumes from the one committed chunk.
    done = update_index(model, cfg, VIDEOS, index, CONFIG, checkpoint,
                        batch_size=BATCH, commit_every=COMMIT_EVERY)
    assert done['resumed'] == COMMIT_EVERY and done['total'] == NUM_VIDEOS


def test_shards_are_whole_batches_covering_everything():
    for total in (0, 1, 7, 8, 90, 1001):
        for world in (1, 2, 3, 8):
            bounds = [shard_bounds(total, BATCH, r, world)
                      for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert all(start % BATCH == 0 for start, _ in bounds)


def test_two_processes_build_the_one_process_index(workspace, checkpoint,
                                                   one_shot_index, tmp_path):
    index = tmp_path / 'dist_index'
    args = index_args(checkpoint, index)
    proc = run(['bash', str(REPO / 'tools/dist_index.sh'), *args[:4], '2',
                *args[4:]], workspace, PORT=str(free_port()))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Rank 0 alone prints the summary.
    assert sum(s.startswith('added=') for s in proc.stdout.splitlines()) == 1
    assert summary(proc.stdout)['total'] == NUM_VIDEOS
    assert_same_index(index, one_shot_index)
    assert not (index / PROGRESS_DIR).exists()
    # A rerun under torchrun finds nothing to encode.
    again = run(['bash', str(REPO / 'tools/dist_index.sh'), *args[:4], '2',
                 *args[4:]], workspace, PORT=str(free_port()))
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary(again.stdout)['encoded'] == 0
    assert_same_index(index, one_shot_index)


def test_killed_two_process_run_resumes(workspace, checkpoint,
                                        one_shot_index, tmp_path):
    """A 2-process run killed mid-way (each rank SIGKILLs itself after 40
    videos; torchrun then stops the other) resumes from each rank's
    progress, re-encoding at most --commit-every videos per rank."""
    index, counts = tmp_path / 'index', tmp_path / 'encoded.txt'
    args = index_args(checkpoint, index)

    def torchrun(kill_after: int, count_file: Path):
        return run([sys.executable, '-m', 'torch.distributed.run',
                    # --standalone: torchrun takes a free port itself (no
                    # window for another process to take ours).
                    '--standalone', '--nproc_per_node=2',
                    str(TESTS_TOOLS / 'index_kill_wrapper.py'),
                    str(count_file), str(kill_after),
                    str(REPO / 'tools/index_videos.py'), *args,
                    '--launcher', 'pytorch'], workspace)

    killed = torchrun(40, counts)
    assert killed.returncode != 0
    assert counts.exists(), f'nothing was encoded:\n{killed.stderr[-3000:]}'
    assert not (index / 'index.json').exists()
    before = sum(map(int, counts.read_text().split()))
    resumed = torchrun(0, tmp_path / 'encoded_2.txt')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = sum(map(int, (tmp_path / 'encoded_2.txt').read_text().split()))
    assert before + after - NUM_VIDEOS <= 2 * COMMIT_EVERY, (before, after)
    assert after < NUM_VIDEOS  # something was resumed
    assert_same_index(index, one_shot_index)


def test_progress_left_by_a_run_killed_after_its_commit_is_dropped(
        workspace, checkpoint, tmp_path, monkeypatch):
    """Killed between writing the index and removing its progress: the
    next run sees progress made against an older index, drops it and finds
    nothing to encode (it neither refuses nor resumes it)."""
    monkeypatch.chdir(workspace)
    cfg = Config.fromfile(str(CONFIG))
    model = init_retriever(cfg, str(checkpoint))
    import mmclip4clip.apis.index as index_module

    def killed(*args, **kwargs):
        raise Killed

    index = tmp_path / 'index'
    monkeypatch.setattr(index_module.shutil, 'rmtree', killed)
    with pytest.raises(Killed):
        update_index(model, cfg, VIDEOS, index, CONFIG, checkpoint,
                     batch_size=BATCH, commit_every=COMMIT_EVERY)
    monkeypatch.undo()
    monkeypatch.chdir(workspace)
    assert len(load_index(index).videos) == NUM_VIDEOS
    assert (index / PROGRESS_DIR / 'rank0-of-1' / 'job.json').is_file()
    again = update_index(model, cfg, VIDEOS, index, CONFIG, checkpoint,
                         batch_size=BATCH, commit_every=COMMIT_EVERY)
    assert again['encoded'] == 0 and again['unchanged'] == NUM_VIDEOS
    assert not (index / PROGRESS_DIR).exists()


@pytest.mark.parametrize('positional, passed', [
    (['cfg.py', 'model.pth', 'videos', 'index', '2'],
     ['cfg.py', 'model.pth', 'videos', 'index']),
    # No checkpoint: the config's own weights, as index_videos.py allows.
    (['cfg.py', 'videos', 'index', '2'], ['cfg.py', 'videos', 'index']),
])
def test_dist_index_passes_the_paths_with_or_without_checkpoint(
        tmp_path, positional, passed):
    """dist_index.sh hands index_videos.py the paths before GPUS and the
    options after it (read back from a stand-in ``python`` on PATH that
    prints its arguments)."""
    fake = tmp_path / 'python'
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}')
    proc = subprocess.run(
        ['bash', str(REPO / 'tools/dist_index.sh'), *positional,
         '--batch-size', '4'], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.splitlines()
    assert '--nproc_per_node=2' in args
    script = next(i for i, a in enumerate(args)
                  if a.endswith('/index_videos.py'))
    assert args[script + 1:] == [*passed, '--launcher', 'pytorch',
                                 '--batch-size', '4']


@pytest.mark.parametrize('positional, message', [
    (['cfg.py', 'index', '2'], 'got 3 arguments'),
    (['cfg.py', 'model.pth', 'videos', 'index', 'x', '2'], 'got 6 arguments'),
    (['cfg.py', 'videos', 'index', 'two'], "not 'two'"),
])
def test_dist_index_refuses_wrong_arguments(positional, message):
    proc = subprocess.run(['bash', str(REPO / 'tools/dist_index.sh'),
                           *positional], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr
