"""SkipSummaryHook: what skip_broken skipped in DataLoader workers (separate
processes) and on other ranks reaches the end-of-training log."""
import json
import os
from types import SimpleNamespace

import numpy as np
import torch
from helpers import run_gloo
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

import mmclip4clip  # noqa: F401  (registers datasets, transforms, hooks)
from mmclip4clip.datasets.synthetic import write_mp4
from mmclip4clip.datasets.video_text_dataset import SkipRecord
from mmclip4clip.engine.skip_summary import gather_skips
from mmclip4clip.registry import DATASETS


class _Counter(BaseModel):
    """A one-parameter model: the loss only needs the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def train_step(self, data, optim_wrapper):
        loss = ((self.weight - len(data)) ** 2).sum()
        optim_wrapper.update_params(loss)
        return dict(loss=loss.detach())


def _filenames(batch):
    return [sample['filename'] for sample in batch]


def _first_sample():
    """Replaces mmengine's random refetch: the counts become exact."""
    return 0


def test_summary_names_files_skipped_in_workers_with_counts(tmp_path):
    videos = tmp_path / 'videos'
    videos.mkdir()
    frames = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3),
                                               dtype=np.uint8)
    for name in ('good0.mp4', 'good1.mp4'):
        write_mp4(frames, videos / name, 10)
    broken = videos / 'broken.mp4'
    broken.write_bytes(np.random.default_rng(1).bytes(4096))
    ann = tmp_path / 'train.json'
    ann.write_text(json.dumps([
        dict(video='good0.mp4', captions=['a']),
        dict(video='broken.mp4', captions=['b', 'c']),  # samples 1, 2
        dict(video='gone.mp4', captions=['d']),  # dropped when loaded
        dict(video='good1.mp4', captions=['e']),
    ]))
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        dataset = DATASETS.build(dict(
            type='VideoTextDataset', ann_file=str(ann),
            data_prefix=dict(video=str(videos)), skip_broken=True,
            pipeline=[dict(type='AVInit', num_threads=1),
                      dict(type='SampleFramesByRate', max_frames=2,
                           feature_framerate=1),
                      dict(type='AVDecode')]))
    dataset._rand_another = _first_sample
    assert len(dataset) == 4
    runner = Runner(
        model=_Counter(), work_dir=str(tmp_path / 'work'),
        train_dataloader=dict(
            dataset=dataset, batch_size=2, num_workers=2,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=_filenames),
        train_cfg=dict(by_epoch=True, max_epochs=2),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(checkpoint=None),
        custom_hooks=[dict(type='SkipSummaryHook')],
        env_cfg=dict(mp_cfg=dict(mp_start_method='fork')),
        default_scope='mmclip4clip')
    runner.train()
    # The broken video was met in the workers only.
    assert str(broken) not in dataset.skipped
    log = open(os.path.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert (f'skip_broken, epoch 1: 2 training sample(s) of {ann} replaced '
            'by random others (2 in all so far)') in log
    assert 'epoch 2: 2 training sample(s)' in log and '(4 in all so far)' \
        in log
    assert (f'skip_broken summary for {ann}: 4 training sample(s) of 1 '
            'broken video(s) replaced by random others; 1 sample(s) of 1 '
            'missing video(s) dropped when the dataset was loaded') in log
    assert (f'  {broken}: 4 sample(s) replaced: AVInit: BrokenVideoError: '
            f'{broken}: FFmpeg cannot open it') in log
    assert f'  {videos / "gone.mp4"}: 1 sample(s) dropped: ' in log


def test_record_is_removed_by_its_maker_only(tmp_path):
    record = SkipRecord()
    record.add('a.mp4', 'why', 2, dropped=False)
    record.add('a.mp4', 'later', 1, dropped=False)
    assert record.read() == {'a.mp4': dict(error='why', samples=3,
                                           dropped=False)}
    pid = os.fork()
    if pid == 0:  # a forked worker dropping its copy keeps the folder
        del record
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.path.isdir(record.folder)
    folder = record.folder
    del record
    assert not os.path.exists(folder)


def _rank(rank: int, world_size: int, out: str) -> None:
    """One gloo process (:func:`helpers.run_gloo`); rank 0 writes what
    ``gather_skips`` returned."""
    dataset = SimpleNamespace(skip_record=SkipRecord())
    # Every rank loads the whole annotation file: same drops.
    dataset.skip_record.add('gone.mp4', 'missing', 1, dropped=True)
    dataset.skip_record.add('broken.mp4', f'rank {rank}', rank + 1,
                            dropped=False)
    if rank == 1:
        dataset.skip_record.add('other.mp4', 'bad', 3, dropped=False)
    files = gather_skips(dataset)
    if rank == 0:
        with open(out, 'w') as f:
            json.dump(files, f)


def test_skips_of_all_ranks_are_gathered(tmp_path):
    out = tmp_path / 'gathered.json'
    run_gloo(_rank, str(out))
    assert json.loads(out.read_text()) == {
        'gone.mp4': dict(error='missing', samples=1, dropped=True),
        'broken.mp4': dict(error='rank 0', samples=3, dropped=False),
        'other.mp4': dict(error='bad', samples=3, dropped=False),
    }
