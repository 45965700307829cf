"""tools/test.py and tools/train.py on checkpoints that must not run: a
checkpoint of another head, bad files, --resume with nothing to resume. Each
ends with a non-zero exit and a message naming the file or work dir, before
any metric is printed (the first as a subprocess, the others with the tool's
main() in-process, where the error is the exception that ends it)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmclip4clip.apis import init_retriever
from mmclip4clip.engine import CheckpointFileError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / 'configs/retrieval/clip4clip'
MEANP = CONFIGS / 'clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb.py'
SEQTRANSF = CONFIGS / ('clip4clip-seqTransf_tiny-p4-res32-scratch_1xb32-u8-'
                       '30e_synthetic-rgb.py')


def run_tool(args: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def workspace(make_workspace) -> Path:
    """``data/synthetic`` (1 clip per combination) and an untrained meanP
    checkpoint ``meanP.pth``."""
    root = make_workspace('workspace')
    torch.save({'meta': {}, 'state_dict': init_retriever(MEANP).state_dict()},
               root / 'meanP.pth')
    return root


def test_test_tool_refuses_a_checkpoint_without_the_head(workspace):
    seqtransf = init_retriever(SEQTRANSF).state_dict()
    head = sum(k.startswith('head.') for k in seqtransf)
    proc = run_tool([REPO / 'tools/test.py', SEQTRANSF,
                     workspace / 'meanP.pth', '--work-dir',
                     workspace / 'test_work'], cwd=workspace)
    assert proc.returncode != 0
    assert f'checkpoint {workspace / "meanP.pth"} does not fit the model' \
        in proc.stderr, proc.stderr[-3000:]
    assert f'head.*: {head} tensors' in proc.stderr
    assert 'Epoch(test)' not in proc.stdout + proc.stderr  # no metrics


def run_main(load_tool, monkeypatch, tool: str, args: list) -> None:
    """A tool's main() in-process (the test above runs tools/test.py as a
    user does, for its exit status and stderr)."""
    module = load_tool(tool)
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setattr(sys, 'argv', [Path(tool).name, *map(str, args)])
    module.main()


@pytest.mark.parametrize('content, says', [
    (b'', 'is an empty file'),
    (b'epoch_3.pth\n', 'is not a torch checkpoint at all: it is text'),
], ids=['empty', 'text'])
def test_test_tool_names_what_a_bad_file_is(workspace, content, says,
                                            load_tool, monkeypatch, capsys):
    bad = workspace / 'bad.pth'
    bad.write_bytes(content)
    monkeypatch.chdir(workspace)
    with pytest.raises(CheckpointFileError) as info:
        run_main(load_tool, monkeypatch, 'tools/test.py',
                 [MEANP, bad, '--work-dir', workspace / 'test_work'])
    assert f'checkpoint {bad} {says}' in str(info.value)
    assert 'execute code' not in str(info.value)
    assert 'Epoch(test)' not in ''.join(capsys.readouterr())  # no metrics


def test_auto_resume_in_a_work_dir_without_checkpoints_fails(
        workspace, load_tool, monkeypatch, capsys):
    work_dir = workspace / 'fresh_work'
    monkeypatch.chdir(workspace)
    with pytest.raises(FileNotFoundError,
                       match=f'work dir {work_dir} holds no checkpoint'):
        run_main(load_tool, monkeypatch, 'tools/train.py',
                 [MEANP, '--work-dir', work_dir, '--resume'])
    assert 'Epoch(train)' not in ''.join(capsys.readouterr())


def test_resume_from_a_missing_file_names_it(workspace, monkeypatch,
                                             load_tool):
    # In-process: the arguments are checked before anything is built (the
    # test above runs the tool end to end on a resume that fails later).
    train = load_tool('tools/train.py')
    monkeypatch.chdir(workspace)
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setattr(sys, 'argv', [
        'train.py', str(MEANP), '--work-dir', str(workspace / 'resume_work'),
        '--resume', 'gone/epoch_9.pth'])
    with pytest.raises(FileNotFoundError,
                       match='--resume gone/epoch_9.pth: no such checkpoint '
                       'file'):
        train.main()
    assert not (workspace / 'resume_work').exists()
