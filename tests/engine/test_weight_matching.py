"""The one key comparison between a checkpoint and a model, and
init_retriever's refusal of a checkpoint of another head."""
from pathlib import Path

import pytest
import torch

import mmclip4clip  # noqa: F401  (registers every component)
from mmclip4clip.apis import init_retriever
from mmclip4clip.engine.checkpoint_io import (
    CheckpointFileError,
    CheckpointMismatchError,
    compare_weights,
    group_keys,
)

CONFIGS = Path(__file__).resolve().parents[2] / 'configs/retrieval/clip4clip'
MEANP = CONFIGS / 'clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb.py'
SEQTRANSF = CONFIGS / ('clip4clip-seqTransf_tiny-p4-res32-scratch_1xb32-u8-'
                       '30e_synthetic-rgb.py')


def test_group_keys_is_compact_and_keeps_lone_keys_whole():
    keys = [f'head.transformer.resblocks.{i}.attn.in_proj_weight'
            for i in range(3)] + ['head.frame_position_embeddings.weight',
                                  'backbone.conv2.weight']
    assert group_keys(keys) == 'backbone.conv2.weight, head.*: 4 tensors'
    assert group_keys(keys[:3]) == 'head.transformer.resblocks.*: 3 tensors'


def test_compare_weights_finds_every_kind_of_difference():
    model = {'a.w': torch.zeros(2), 'b.w': torch.zeros(2, 3),
             'c.w': torch.zeros(1)}
    checkpoint = {'a.w': torch.ones(2), 'b.w': torch.ones(3, 2),
                  'd.w': torch.ones(1)}
    mismatch = compare_weights(model, checkpoint)
    assert mismatch.missing == ['c.w'] and mismatch.unexpected == ['d.w']
    assert mismatch.wrong_shape == {'b.w': ((3, 2), (2, 3))}
    assert 'b.w (checkpoint [3, 2], model [2, 3])' in mismatch.describe()
    assert not compare_weights(model, model)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """A meanP and a seqTransf checkpoint of the tiny synthetic models, and
    the number of head tensors of the seqTransf one."""
    root = tmp_path_factory.mktemp('ckpts')
    paths = {}
    for name, config in (('meanP', MEANP), ('seqTransf', SEQTRANSF)):
        model = init_retriever(config)
        paths[name] = root / f'{name}.pth'
        torch.save({'meta': {}, 'state_dict': model.state_dict()},
                   paths[name])
    head = sum(k.startswith('head.') for k in
               torch.load(paths['seqTransf'])['state_dict'])
    return paths, head


def test_init_retriever_refuses_a_checkpoint_without_the_head(saved):
    paths, head = saved
    assert head > 0
    with pytest.raises(CheckpointMismatchError) as info:
        init_retriever(SEQTRANSF, paths['meanP'])
    message = str(info.value)
    assert str(paths['meanP']) in message
    assert f'missing from the checkpoint (the model would keep its initial ' \
        f'values): head.*: {head} tensors' in message


def test_init_retriever_refuses_a_checkpoint_with_an_unused_head(saved):
    paths, head = saved
    with pytest.raises(CheckpointMismatchError,
                       match=rf'in the checkpoint but not in the model: '
                       rf'head\.\*: {head} tensors'):
        init_retriever(MEANP, paths['seqTransf'])


def test_init_retriever_loads_its_own_checkpoint_and_names_bad_files(
        saved, tmp_path):
    paths, _ = saved
    model = init_retriever(SEQTRANSF, paths['seqTransf'])
    want = torch.load(paths['seqTransf'])['state_dict']
    assert all(torch.equal(v, want[k]) for k, v in
               model.state_dict().items())
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(CheckpointFileError,
                       match=f'{empty} is an empty file'):
        init_retriever(MEANP, empty)
