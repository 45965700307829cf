"""The command-line tools, run as a user runs them: subprocesses on a tiny
synthetic dataset laid out where the synthetic config expects it."""
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config

from mmclip4clip.engine.config_utils import ConfigOptionError, merge_cfg_options

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ('configs/retrieval/clip4clip/'
                 'clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb.py')
# Training epochs of 2 iterations (64 of the 180 captions, batch 32): the
# tests need a checkpoint and the loop's mechanics, not a trained model.
FEW_ITERS = ['train_dataloader.dataset.indices=64']
METRIC_KEYS = {f'{d}/{m}' for d in ('t2v', 'v2t')
               for m in ('R1', 'R5', 'R10', 'MdR', 'MnR')}


def run_tool(args: list[str], cwd: Path, timeout: int = 300):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def workspace(make_workspace) -> Path:
    return make_workspace('workspace')


@pytest.fixture(scope='module')
def trained(workspace) -> Path:
    """One epoch of training with validation; returns the checkpoint."""
    work_dir = workspace / 'work'
    proc = run_tool([
        REPO / 'tools/train.py', CONFIG, '--work-dir', work_dir,
        '--cfg-options', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
        'default_hooks.checkpoint.interval=1', *FEW_ITERS
    ], cwd=workspace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoint = work_dir / 'epoch_1.pth'
    assert checkpoint.is_file()
    return checkpoint


def test_import_never_loads_mmaction_models():
    code = ('import sys, mmclip4clip; '
            "assert 'mmaction.models' not in sys.modules, 'imported'")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_train_logs_both_directions_of_metrics(workspace, trained):
    log = next((workspace / 'work').glob('*/*.log')).read_text()
    for key in METRIC_KEYS:
        assert key in log


@pytest.fixture(scope='module')
def test_dump(workspace, trained) -> dict:
    """tools/test.py --dump on the trained checkpoint, one process."""
    dump = workspace / 'out' / 'result.pkl'
    proc = run_tool([REPO / 'tools/test.py', CONFIG, trained, '--dump', dump,
                     '--work-dir', workspace / 'test_work'], cwd=workspace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(dump, 'rb') as f:
        return pickle.load(f)


def test_test_tool_dumps_loadable_result(test_dump):
    result = test_dump
    num_videos, num_captions = 90, 180
    assert result['scores'].shape == (num_captions, num_videos)
    assert result['scores'].dtype == np.float32
    assert len(result['video_ids']) == num_videos
    assert len(set(result['video_ids'])) == num_videos
    assert len(result['captions']) == num_captions
    assert result['text_video_index'].shape == (num_captions, )
    assert result['t2v_ranks'].shape == (num_captions, )
    assert result['v2t_ranks'].shape == (num_videos, )
    assert set(result['metrics']) == METRIC_KEYS
    # The dumped ranks are those of the dumped matrix.
    scores, gt = result['scores'], result['text_video_index']
    own = scores[np.arange(num_captions), gt][:, None]
    np.testing.assert_array_equal(result['t2v_ranks'],
                                  1 + (scores > own).sum(axis=1))
    assert result['metrics']['t2v/R1'] == pytest.approx(
        100 * np.mean(result['t2v_ranks'] <= 1))
    # Captions are listed video by video, as in the annotation file.
    assert 'test/' in result['video_ids'][0]


@pytest.mark.parametrize('option, named', [
    ('no_such_key=1', 'no_such_key'),
    ('train_cfg.max_epoch=3', 'max_epoch'),
    ('model.head.no_such_arg=1', 'no_such_arg'),
    ('model.no_such_part.depth=1', 'model.no_such_part'),
])
def test_unknown_config_key_is_named(option, named):
    # In-process: tests/engine/test_cfg_options.py runs the tool once to show
    # the error ends it before anything is built.
    key, value = option.split('=')
    with pytest.raises(ConfigOptionError, match=re.escape(named)):
        merge_cfg_options(Config.fromfile(str(CONFIG)), {key: int(value)})


def test_missing_checkpoint_is_named(workspace, monkeypatch, load_tool):
    # In-process: the arguments are checked before anything is built (the
    # other tests run the tool end to end).
    test = load_tool('tools/test.py')
    monkeypatch.chdir(workspace)
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setattr(sys, 'argv',
                        ['test.py', str(CONFIG), 'nowhere/ckpt.pth'])
    with pytest.raises(FileNotFoundError, match='nowhere/ckpt.pth'):
        test.main()


def test_two_cpu_processes_train_and_match_one_process_test(
        workspace, trained, test_dump, free_port):
    """dist_train.sh / dist_test.sh run on gloo without CUDA, exit cleanly,
    and 2-process evaluation gives exactly the 1-process ranks (those of
    ``test_dump``)."""
    import os
    env = dict(os.environ, PORT=str(free_port()),
               PATH=f'{Path(sys.executable).parent}:{os.environ["PATH"]}')
    work_dir = workspace / 'dist_work'
    proc = subprocess.run([
        'bash', REPO / 'tools/dist_train.sh', CONFIG, '2', '--work-dir',
        work_dir, '--cfg-options', 'train_cfg.max_epochs=1',
        'train_cfg.val_interval=1', *FEW_ITERS
    ], cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work_dir / 'epoch_1.pth').is_file()

    env['PORT'] = str(free_port())
    dump = workspace / 'dist_2.pkl'
    proc = subprocess.run(
        ['bash', *map(str, [REPO / 'tools/dist_test.sh', CONFIG, trained]),
         '2', '--dump', str(dump), '--work-dir',
         str(workspace / 'dist_test_2')],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(dump, 'rb') as f:
        dumps = {'1': test_dump, '2': pickle.load(f)}
    assert dumps['1']['video_ids'] == dumps['2']['video_ids']
    np.testing.assert_allclose(dumps['1']['scores'], dumps['2']['scores'],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(dumps['1']['t2v_ranks'],
                                  dumps['2']['t2v_ranks'])
    assert dumps['1']['metrics'] == dumps['2']['metrics']


def test_converted_openai_checkpoint_runs_in_the_test_tool(workspace,
                                                           monkeypatch,
                                                           load_tool):
    """convert_checkpoint.py writes model.pth + config.py that tools/test.py
    runs as is (tightTransf: the pairwise path of the evaluation loop)."""
    sys.path.insert(0, str(REPO / 'tests' / 'models'))
    from openai_reference import make_openai_state_dict, save_openai_torchscript

    # The synthetic data's shapes: 32 px frames, word-level vocabulary < 256.
    weights = make_openai_state_dict(width=64, vision_width=64, image_size=32,
                                     context_length=16, vocab=256, embed_dim=64)
    src = workspace / 'ViT-tiny.pt'
    save_openai_torchscript(weights, str(src))
    out = workspace / 'converted'
    proc = run_tool([
        REPO / 'tools/convert_checkpoint.py', src, out, '--format', 'openai',
        '--sim-header', 'tightTransf', '--max-words', '16', '--max-frames', '4',
        '--base-config', CONFIG], cwd=workspace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'tools/test.py' in proc.stdout
    # tools/test.py's main() in-process (the tests above run it as a user
    # does): the converted files are what it reads. 16 of the 90 test videos:
    # each of their captions x videos is a pass of the cross-encoder.
    num_videos = 16
    dump = workspace / 'converted_result.pkl'
    monkeypatch.chdir(workspace)
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setattr(sys, 'argv', [
        'test.py', str(out / 'config.py'), str(out / 'model.pth'), '--dump',
        str(dump), '--work-dir', str(workspace / 'converted_work'),
        '--cfg-options', f'test_dataloader.dataset.indices={num_videos}'])
    load_tool('tools/test.py').main()
    with open(dump, 'rb') as f:
        result = pickle.load(f)
    assert result['scores'].shape == (2 * num_videos, num_videos)
    assert np.isfinite(result['scores']).all()
    assert result['scores'].std() > 0
    assert set(result['metrics']) == METRIC_KEYS
