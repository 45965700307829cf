"""CLIP4ClipRunner and AtomicCheckpointHook with a toy model: checkpoints
are written whole or not at all, resume needs a checkpoint, and evaluation
refuses weights that do not fit the model (training's load_from reports
them)."""
import errno

import pytest
import torch
from mmengine.evaluator import BaseMetric
from mmengine.fileio.backends import LocalBackend
from mmengine.model import BaseModel
from torch import nn
from torch.utils.data import Dataset

import mmclip4clip.utils.fileio as fileio
from mmclip4clip.engine.checkpoint_io import (
    CheckpointMismatchError,
    load_checkpoint_file,
)
from mmclip4clip.engine.runner import CLIP4ClipRunner


class ToyModel(BaseModel):
    """A linear layer, plus a ``head`` when ``with_head`` (as a seqTransf
    model has weights a meanP model lacks)."""

    def __init__(self, with_head: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)
        if with_head:
            self.head = nn.Sequential(nn.Linear(1, 3), nn.Linear(3, 1))

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.linear(torch.stack(inputs))
        if hasattr(self, 'head'):
            out = self.head(out)
        if mode == 'loss':
            return dict(loss=out.pow(2).mean())
        return [dict(score=o) for o in out]


class ToyDataset(Dataset):
    metainfo = dict()

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index):
        return dict(inputs=torch.full((2, ), float(index)), data_samples=None)


class CountMetric(BaseMetric):
    def process(self, data_batch, data_samples) -> None:
        self.results.extend(data_samples)

    def compute_metrics(self, results) -> dict:
        return dict(count=len(results))


def make_runner(work_dir, with_head=False, max_epochs=3, keep=-1, lr=0.01,
                **kwargs):
    loader = dict(dataset=ToyDataset(),
                  sampler=dict(type='DefaultSampler', shuffle=False),
                  batch_size=4, num_workers=0,
                  collate_fn=dict(type='pseudo_collate'))
    return CLIP4ClipRunner(
        model=ToyModel(with_head), work_dir=str(work_dir),
        train_dataloader=loader,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=lr)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        test_dataloader=loader, test_cfg=dict(),
        test_evaluator=[CountMetric()],
        default_hooks=dict(checkpoint=dict(type='AtomicCheckpointHook',
                                           interval=1, max_keep_ckpts=keep)),
        custom_hooks=[dict(type='SafeCheckpointHook')],
        default_scope='mmclip4clip', log_level='WARNING',
        experiment_name=f'toy_{work_dir.name}_{id(kwargs)}', **kwargs)


def leftovers(work_dir) -> list[str]:
    return sorted(p.name for p in work_dir.iterdir() if '.tmp' in p.name)


def test_disk_full_while_saving_leaves_no_partial_checkpoint(tmp_path,
                                                             monkeypatch):
    """The third checkpoint's write fails half-way with ENOSPC: no
    epoch_3.pth, no temporary file, the earlier ones load, and
    last_checkpoint still names epoch_2.pth."""
    put = LocalBackend.put
    calls = []

    def put_then_fill_disk(self, obj, filepath):
        calls.append(filepath)
        if len(calls) == 3:
            with open(filepath, 'wb') as f:
                f.write(obj[:len(obj) // 2])
            raise OSError(errno.ENOSPC, 'No space left on device')
        return put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, 'put', put_then_fill_disk)
    runner = make_runner(tmp_path)
    with pytest.raises(OSError, match='No space left'):
        runner.train()
    assert len(calls) == 3
    names = sorted(p.name for p in tmp_path.glob('*.pth'))
    assert names == ['epoch_1.pth', 'epoch_2.pth']
    assert leftovers(tmp_path) == []
    for name in names:
        assert 'state_dict' in load_checkpoint_file(tmp_path / name)
    pointer = (tmp_path / 'last_checkpoint').read_text()
    assert pointer == str(tmp_path / 'epoch_2.pth')


def test_checkpoints_load_with_plain_torch_safe_mode(tmp_path):
    """No numpy scalar (the timer's eta) is left for torch's allow-list:
    mmaction2 without the plugin reads our checkpoints."""
    make_runner(tmp_path, max_epochs=1).train()
    checkpoint = torch.load(tmp_path / 'epoch_1.pth', weights_only=True)
    assert isinstance(checkpoint['message_hub']['runtime_info']['eta'],
                      float)


def test_failed_pointer_write_keeps_the_previous_pointer(tmp_path,
                                                         monkeypatch):
    """Writing last_checkpoint fails half-way on the second epoch: the
    pointer still names epoch_1.pth (mmengine truncates it first)."""
    written = []

    class FillingFile:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text[:3])
            raise OSError(errno.ENOSPC, 'No space left on device')

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def open_filling_second_pointer(path, mode='r', **kwargs):
        f = open(path, mode, **kwargs)
        if 'last_checkpoint' in str(path) and 'w' in mode:
            written.append(path)
            if len(written) == 2:
                return FillingFile(f)
        return f

    monkeypatch.setattr(fileio, 'open', open_filling_second_pointer,
                        raising=False)
    with pytest.raises(OSError, match='No space left'):
        make_runner(tmp_path).train()
    assert (tmp_path / 'last_checkpoint').read_text() == \
        str(tmp_path / 'epoch_1.pth')
    assert leftovers(tmp_path) == []


def test_max_keep_ckpts_removes_the_oldest_after_saving(tmp_path):
    make_runner(tmp_path, keep=2).train()
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == \
        ['epoch_2.pth', 'epoch_3.pth']


def test_auto_resume_without_checkpoint_names_the_work_dir(tmp_path):
    runner = make_runner(tmp_path / 'empty_work', resume=True)
    with pytest.raises(FileNotFoundError) as info:
        runner.train()
    assert str(tmp_path / 'empty_work') in str(info.value)
    assert 'holds no checkpoint' in str(info.value)


def test_resume_continues_and_refuses_another_model(tmp_path):
    make_runner(tmp_path / 'a', max_epochs=1).train()
    resumed = make_runner(tmp_path / 'a', max_epochs=2, resume=True)
    resumed.train()
    assert resumed.epoch == 2 and (tmp_path / 'a' / 'epoch_2.pth').exists()
    other = make_runner(tmp_path / 'b', with_head=True, resume=True,
                        load_from=str(tmp_path / 'a' / 'epoch_2.pth'))
    with pytest.raises(CheckpointMismatchError, match=r'head\.\*: 4 tensors'):
        other.train()


@pytest.fixture
def plain_checkpoint(tmp_path):
    """A checkpoint of the model without a head (a "meanP" checkpoint)."""
    path = tmp_path / 'plain.pth'
    torch.save({'state_dict': ToyModel().state_dict()}, path)
    return path


def test_evaluation_refuses_a_checkpoint_without_the_head(tmp_path,
                                                          plain_checkpoint):
    runner = make_runner(tmp_path / 'test', with_head=True,
                         load_from=str(plain_checkpoint))
    with pytest.raises(CheckpointMismatchError) as info:
        runner.test()
    message = str(info.value)
    assert str(plain_checkpoint) in message
    assert 'missing from the checkpoint' in message
    assert 'head.*: 4 tensors' in message


def test_evaluation_refuses_a_checkpoint_with_unused_weights(tmp_path):
    path = tmp_path / 'with_head.pth'
    torch.save({'state_dict': ToyModel(with_head=True).state_dict()}, path)
    runner = make_runner(tmp_path / 'test', load_from=str(path))
    with pytest.raises(CheckpointMismatchError,
                       match=r'in the checkpoint but not in the model: '
                       r'head\.\*: 4 tensors'):
        runner.test()


def test_fine_tuning_load_from_is_lenient_and_says_what_it_skipped(
        tmp_path, plain_checkpoint):
    runner = make_runner(tmp_path / 'ft', with_head=True, max_epochs=1,
                         lr=0.0, load_from=str(plain_checkpoint))
    runner.train()
    want = torch.load(plain_checkpoint)['state_dict']
    assert torch.equal(runner.model.linear.weight.detach(),
                       want['linear.weight'])
    log = next((tmp_path / 'ft').glob('*/*.log')).read_text()
    assert f'load_from {plain_checkpoint}: not every weight was loaded' in log
    assert 'missing from the checkpoint' in log
    assert 'head.*: 4 tensors' in log
