"""Crash-and-resume, seeded determinism, unsafe checkpoints and odd-sized
distributed evaluation, with the command-line tools run as subprocesses on a
tiny synthetic dataset.

The training runs (module fixture ``runs``): 2 short epochs of the synthetic
tightTransf config from scratch (its dropout draws from torch's generator,
so an exact resume needs the generator states that SafeCheckpointHook
saves), 3 iterations each (the first 96 of the 180 captions, batch 32),
``randomness.seed=0
randomness.deterministic=True``, a checkpoint every epoch, all kept:

* ``straight``: uninterrupted;
* ``killed``: the same, with a hook (``kill_hook.py``) that SIGKILLs the
  process in the middle of epoch 2, then resumed with ``--resume`` and the
  plain config to the end.
"""
import json
import os
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmclip4clip.engine import UnsafeCheckpointError

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ('configs/retrieval/clip4clip/clip4clip-tightTransf_'
                 'tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb.py')
HERE = Path(__file__).resolve().parent
NUM_CAPTIONS = 96  # of the 180: the mechanics need iterations, not data
ITERS_PER_EPOCH = 3  # 96 captions / 32
KILL_AT_ITER = ITERS_PER_EPOCH + 2  # epoch 2 (1-based) after 2 of its 3 iters
TRAIN_OPTIONS = [
    '--no-validate', '--cfg-options', 'train_cfg.max_epochs=2',
    'train_cfg.val_interval=100', 'default_hooks.checkpoint.interval=1',
    'default_hooks.checkpoint.max_keep_ckpts=-1',
    'default_hooks.logger.interval=1', 'train_dataloader.batch_size=32',
    f'train_dataloader.dataset.indices={NUM_CAPTIONS}',
    'randomness.seed=0', 'randomness.deterministic=True',
    'load_from=None',  # from scratch, not from the synthetic meanP model
]


def run_tool(args: list, cwd: Path, env: dict | None = None,
             timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_tools_together(*runs: tuple[list, Path, dict | None],
                       timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """``run_tool`` for independent runs ``(args, cwd, env)``, started
    together: each spends most of its start-up importing on one core."""
    procs = []
    for i, (args, cwd, env) in enumerate(runs):
        out = cwd / f'.together_{i}.out'
        err = cwd / f'.together_{i}.err'
        with open(out, 'w') as stdout, open(err, 'w') as stderr:
            procs.append((subprocess.Popen(
                [sys.executable, *map(str, args)], cwd=cwd, env=env,
                stdout=stdout, stderr=stderr, text=True), out, err))
    done = []
    for proc, out, err in procs:
        proc.wait(timeout=timeout)
        done.append(subprocess.CompletedProcess(
            proc.args, proc.returncode, out.read_text(), err.read_text()))
        out.unlink()
        err.unlink()
    return done


def load(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=False)


def differing_tensors(a: dict, b: dict) -> list[str]:
    """Names of the tensors that are not exactly equal, with the largest
    absolute difference; [] when all are."""
    assert a.keys() == b.keys()
    return [
        f'{k} (max |diff| {(a[k].double() - b[k].double()).abs().max():.3g})'
        for k in a if not torch.equal(a[k], b[k])
    ]


@pytest.fixture(scope='module')
def workspace(make_workspace) -> Path:
    return make_workspace('workspace')


@pytest.fixture(scope='module')
def runs(workspace) -> dict:
    """The uninterrupted run and the killed run (side by side), then the
    killed run's resumption."""
    kill_config = workspace / 'kill_config.py'
    kill_config.write_text(
        f'_base_ = [{str(CONFIG)!r}]\n'
        "custom_imports = dict(imports=['kill_hook'], "
        'allow_failed_imports=False)\n'
        "custom_hooks = [dict(type='SafeCheckpointHook'),\n"
        f"                dict(type='SigkillAtIterHook', "
        f'at_iter={KILL_AT_ITER})]\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(HERE), os.environ.get('PYTHONPATH')])))
    killed_dir = workspace / 'killed'
    straight, killed = run_tools_together(
        ([REPO / 'tools/train.py', CONFIG, '--work-dir',
          workspace / 'straight', *TRAIN_OPTIONS], workspace, None),
        ([REPO / 'tools/train.py', kill_config, '--work-dir', killed_dir,
          *TRAIN_OPTIONS], workspace, env))
    assert straight.returncode == 0, straight.stderr[-3000:]
    files_after_kill = sorted(p.name for p in killed_dir.glob('*.pth'))
    # Without the kill hook: the plain config, as a user would resume.
    resumed = run_tool([REPO / 'tools/train.py', CONFIG, '--work-dir',
                        killed_dir, '--resume', *TRAIN_OPTIONS],
                       cwd=workspace)
    return dict(straight=workspace / 'straight', straight_proc=straight,
                killed=killed_dir, killed_proc=killed,
                files_after_kill=files_after_kill, resumed_proc=resumed)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(runs):
    killed = runs['killed_proc']
    assert killed.returncode == -signal.SIGKILL, (
        f'expected death by SIGKILL, got {killed.returncode}: '
        f'{killed.stderr[-3000:]}')
    # Killed in the middle of epoch 2: its second iteration logged, not the
    # third; epoch 1's checkpoint written, epoch 2's not.
    log = killed.stdout + killed.stderr
    assert 'Epoch(train) [2][2/3]' in log
    assert 'Epoch(train) [2][3/3]' not in log
    assert runs['files_after_kill'] == ['epoch_1.pth']

    resumed = runs['resumed_proc']
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert re.search(rf'resumed epoch: 1, iter: {ITERS_PER_EPOCH}\b', log), \
        log[-3000:]
    assert 'Epoch(train) [1]' not in log  # epoch 1 is not trained again
    assert 'Epoch(train) [2][1/3]' in log

    # Same weights, optimizer state and schedule as without the crash: every
    # tensor bit for bit (the training reads no global RNG, the sampler
    # reshuffles from seed + epoch, and this CPU run is reproducible).
    want = load(runs['straight'] / 'epoch_2.pth')
    got = load(runs['killed'] / 'epoch_2.pth')
    assert got['meta']['epoch'] == want['meta']['epoch'] == 2
    assert got['meta']['iter'] == want['meta']['iter'] == 2 * ITERS_PER_EPOCH
    diff = differing_tensors(want['state_dict'], got['state_dict'])
    assert not diff, f'{len(diff)} weights differ: {diff[:5]}'
    want_opt, got_opt = want['optimizer'], got['optimizer']
    assert want_opt['param_groups'] == got_opt['param_groups']
    assert want_opt['state'].keys() == got_opt['state'].keys()
    for index in want_opt['state']:
        diff = differing_tensors(want_opt['state'][index],
                                 got_opt['state'][index])
        assert not diff, f'optimizer state of parameter {index}: {diff}'
    assert want['param_schedulers'] == got['param_schedulers']


def test_seeded_deterministic_runs_give_identical_weights(runs):
    """Two processes, same seed, ``randomness.deterministic=True``: the
    same weights after one epoch (the killed run's first epoch is an
    independent run of the same config)."""
    want = load(runs['straight'] / 'epoch_1.pth')['state_dict']
    got = load(runs['killed'] / 'epoch_1.pth')['state_dict']
    diff = differing_tensors(want, got)
    assert not diff, f'{len(diff)} weights differ: {diff[:5]}'
    # And training did change them: the comparison is not vacuous.
    later = load(runs['straight'] / 'epoch_2.pth')['state_dict']
    assert differing_tensors(want, later)


class CodeRunningPayload:
    """Unpickling this runs ``os.mkdir(path)``: any code could run there."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path, )


def test_resume_refuses_checkpoint_with_unsafe_pickle(workspace, runs,
                                                      tmp_path, load_tool,
                                                      monkeypatch, capsys):
    # tools/train.py's main() in-process: the refusal is the exception that
    # ends it (the other runs here show the tool's exits as a user sees them).
    checkpoint = load(runs['straight'] / 'epoch_1.pth')
    marker = tmp_path / 'code_ran'
    checkpoint['extra'] = CodeRunningPayload(str(marker))
    bad = tmp_path / 'unsafe_epoch_1.pth'
    torch.save(checkpoint, bad)

    monkeypatch.chdir(workspace)
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setattr(sys, 'argv', [
        'train.py', str(CONFIG), '--work-dir', str(tmp_path / 'work'),
        '--resume', str(bad), *TRAIN_OPTIONS])
    with pytest.raises(UnsafeCheckpointError) as info:
        load_tool('tools/train.py').main()
    assert not marker.exists(), 'unpickling the checkpoint ran its code'
    assert 'refused' in str(info.value)
    assert str(bad) in str(info.value)
    assert 'Epoch(train)' not in ''.join(capsys.readouterr())


def test_one_and_two_process_evaluation_agree_on_odd_test_set(
        workspace, runs, free_port, load_tool, monkeypatch):
    """45 test videos over 2 processes: the sampler pads one shard with a
    repeated video, which the evaluation must drop. The one-process run is
    tools/test.py's main() in-process; the two processes run dist_test.sh."""
    num_videos = 45
    checkpoint = runs['straight'] / 'epoch_1.pth'
    options = ['--cfg-options', f'test_dataloader.dataset.indices={num_videos}']
    dumps = {}

    monkeypatch.chdir(workspace)
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setattr(sys, 'argv', [
        'test.py', str(CONFIG), str(checkpoint), '--dump',
        str(workspace / 'odd_1.pkl'), '--work-dir',
        str(workspace / 'odd_test_1'), *options])
    load_tool('tools/test.py').main()
    with open(workspace / 'odd_1.pkl', 'rb') as f:
        dumps['1'] = pickle.load(f)

    env = dict(os.environ, PORT=str(free_port()),
               PATH=f'{Path(sys.executable).parent}:{os.environ["PATH"]}')
    env.pop('LOCAL_RANK', None)  # torchrun sets each process's own
    dump = workspace / 'odd_2.pkl'
    proc = subprocess.run(
        ['bash', *map(str, [REPO / 'tools/dist_test.sh', CONFIG, checkpoint]),
         '2', '--dump', str(dump), '--work-dir',
         str(workspace / 'odd_test_2'), *options],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(dump, 'rb') as f:
        dumps['2'] = pickle.load(f)

    one, two = dumps['1'], dumps['2']
    with open(workspace / 'data/synthetic/annotations/test.json') as f:
        records = json.load(f)[:num_videos]
    assert one['video_ids'] == [r.get('video_id', r['video']) for r in records]
    assert len(set(one['video_ids'])) == num_videos
    assert one['scores'].shape == (2 * num_videos, num_videos)
    assert one['video_ids'] == two['video_ids']
    assert one['captions'] == two['captions']
    np.testing.assert_array_equal(one['text_video_index'],
                                  two['text_video_index'])
    np.testing.assert_allclose(one['scores'], two['scores'], rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(one['t2v_ranks'], two['t2v_ranks'])
    np.testing.assert_array_equal(one['v2t_ranks'], two['v2t_ranks'])
    assert one['metrics'] == two['metrics']

