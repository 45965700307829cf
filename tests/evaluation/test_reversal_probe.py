"""The reversal probe (tools/analysis_tools/reversal.py): a clip against its
time-reversed copy."""
import importlib.util
from pathlib import Path

import torch
from helpers import TINY_CLIP
from mmengine.registry import DefaultScope
from mmengine.structures import BaseDataElement

import mmclip4clip  # noqa: F401
from mmclip4clip.registry import MODELS

_REVERSAL = (Path(__file__).resolve().parents[2] / 'tools' / 'analysis_tools' /
             'reversal.py')
_spec = importlib.util.spec_from_file_location('reversal', _REVERSAL)
reversal = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reversal)
reversal_accuracy = reversal.reversal_accuracy
reverse_real_frames = reversal.reverse_real_frames


def test_reverse_real_frames_keeps_padding_at_the_end():
    frames = torch.arange(2 * 4).view(2, 4, 1).float()
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    out = reverse_real_frames(frames, mask)
    assert out[0, :, 0].tolist() == [2, 1, 0, 3]
    assert out[1, :, 0].tolist() == [7, 6, 5, 4]


def fake_dataset(num_videos=4, frames=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(num_videos):
        motion = 'still' if i == 0 else 'left'
        real = frames - (i % 2)
        mask = torch.zeros(frames, dtype=torch.long)
        mask[:real] = 1
        samples.append(dict(
            inputs=dict(
                imgs=torch.randint(0, 256, (frames, 3, 16, 16),
                                   dtype=torch.uint8, generator=gen),
                frame_mask=mask,
                input_ids=torch.tensor([[62, 5 + i, 63], [62, 9, 63]]),
                attention_mask=torch.ones(2, 3, dtype=torch.long)),
            data_samples=BaseDataElement(metainfo=dict(
                filename=f'test/{i:05d}_red_square_{motion}.mp4'))))
    return samples


def is_moving(path: str) -> bool:
    return not path.endswith('still.mp4')


def build(head):
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        return MODELS.build(dict(
            type='CLIP4Clip', head=head,
            backbone=dict(type='CLIPBackbone', config=TINY_CLIP))).eval()


def test_mean_pooling_ties_on_every_caption():
    result = reversal_accuracy(build(dict(type='MeanPHead')), fake_dataset(),
                               is_moving, progress=False)
    assert result['captions'] == 6  # 3 moving clips x 2 captions
    assert result['ties'] == 6
    assert result['accuracy'] == 50.0


def test_temporal_head_counts_wins_against_a_slow_loop():
    model = build(dict(type='SeqTransfHead', embed_dim=32, num_layers=2,
                       num_heads=2, max_positions=16))
    with torch.no_grad():
        model.head.frame_position_embeddings.weight.normal_()
    dataset = fake_dataset()
    result = reversal_accuracy(model, dataset, is_moving, progress=False)
    wins = total = 0
    with torch.no_grad():
        for sample in dataset[1:]:
            x = sample['inputs']
            frames = (x['imgs'].float() - model.data_preprocessor.mean) \
                / model.data_preprocessor.std
            frames = frames * x['frame_mask'][:, None, None, None]
            n = int(x['frame_mask'].sum())
            backwards = frames.clone()
            backwards[:n] = frames[:n].flip(0)
            scores = model.sim_matrix(
                x['input_ids'], x['attention_mask'],
                torch.stack([frames, backwards]),
                torch.stack([x['frame_mask']] * 2))
            assert ((scores[:, 0] - scores[:, 1]).abs()
                    > 1e-5 * scores.abs().max()).all()
            wins += int((scores[:, 0] > scores[:, 1]).sum())
            total += len(scores)
    assert result['ties'] == 0
    assert result['accuracy'] == 100.0 * wins / total
