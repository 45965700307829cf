"""seqLSTM and seqTransf heads: batched equals per-video, padding is inert,
and frame order matters (unlike meanP)."""
import pytest
import torch
import torch.nn.functional as F

from mmclip4clip.models.heads import MeanPHead, SeqLSTMHead, SeqTransfHead

D, T = 64, 6


def make_head(kind: str):
    torch.manual_seed(0)
    head = {'lstm': lambda: SeqLSTMHead(D),
            'transf': lambda: SeqTransfHead(D, num_layers=2, max_positions=16)}
    return head[kind]().eval()


def batch_with_padding():
    torch.manual_seed(1)
    lengths = [6, 3, 1, 4]
    x = torch.randn(len(lengths), T, D)
    mask = torch.zeros(len(lengths), T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    return x, mask, lengths


@pytest.mark.parametrize('kind', ['lstm', 'transf'])
def test_batched_equals_per_video_on_real_frames(kind):
    head = make_head(kind)
    x, mask, lengths = batch_with_padding()
    with torch.no_grad():
        batched = head(x, mask)
        for i, n in enumerate(lengths):
            real = x[i:i + 1, :n]
            transformed = head.transform(real, None)[0]  # [n, D]
            expected = F.normalize(
                F.normalize(transformed, dim=-1).mean(0), dim=-1)
            torch.testing.assert_close(batched[i], expected, rtol=1e-5,
                                       atol=1e-5)


@pytest.mark.parametrize('kind', ['lstm', 'transf'])
def test_padded_frames_change_nothing(kind):
    head = make_head(kind)
    x, mask, _ = batch_with_padding()
    garbage = x.clone()
    garbage[~mask] = 1e3 * torch.randn(int((~mask).sum()), D)
    with torch.no_grad():
        torch.testing.assert_close(head(garbage, mask), head(x, mask))


def test_mean_pooling_ignores_frame_order_but_temporal_heads_do_not():
    torch.manual_seed(2)
    x = torch.randn(3, T, D)
    reversed_x = x.flip(1)
    with torch.no_grad():
        torch.testing.assert_close(MeanPHead()(x), MeanPHead()(reversed_x))
        for kind in ('lstm', 'transf'):
            head = make_head(kind)
            gap = (head(x) - head(reversed_x)).norm(dim=-1)
            assert (gap > 1e-3).all(), kind


def test_transf_refuses_more_frames_than_positions():
    head = SeqTransfHead(D, num_layers=1, max_positions=4)
    with pytest.raises(ValueError, match='position table'):
        head(torch.randn(1, 5, D))


@pytest.mark.parametrize('head', [
    dict(type='SeqLSTMHead', embed_dim=32),
    dict(type='SeqTransfHead', embed_dim=32, num_layers=1, max_positions=8),
])
def test_temporal_heads_train_inside_clip4clip(clip_config, head):
    from mmengine.registry import MODELS, DefaultScope

    import mmclip4clip  # noqa: F401

    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        model = MODELS.build(dict(
            type='CLIP4Clip', head=head,
            backbone=dict(type='CLIPBackbone', config=clip_config)))
    b, t = 3, 4
    inputs = dict(
        frames=torch.randn(b, t, 3, 16, 16),
        frame_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]),
        input_ids=torch.tensor([[62, 5, 6, 63], [62, 7, 63, 0],
                                [62, 8, 9, 63]]),
        attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0],
                                     [1, 1, 1, 1]]),
        text_video_index=torch.arange(b))
    loss = model(inputs, mode='loss')['loss']
    loss.backward()
    grads = [p.grad for p in model.head.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@torch.no_grad()
def test_reversed_clip_scores_same_for_meanp_only(clip_config):
    """End to end: the score of a clip and of its time-reversed copy."""
    from mmengine.registry import MODELS, DefaultScope

    import mmclip4clip  # noqa: F401

    heads = {
        'meanP': dict(type='MeanPHead'),
        'seqLSTM': dict(type='SeqLSTMHead', embed_dim=32),
        'seqTransf': dict(type='SeqTransfHead', embed_dim=32, num_layers=2,
                          num_heads=2, max_positions=16),
        'tightTransf': dict(type='TightTransfHead', embed_dim=32,
                            num_layers=2, num_heads=2, max_positions=16),
    }
    gen = torch.Generator().manual_seed(5)
    frames = torch.randn(2, 5, 3, 16, 16, generator=gen)
    mask = torch.ones(2, 5, dtype=torch.long)
    ids = torch.tensor([[62, 5, 6, 63], [62, 7, 63, 0]])
    for name, head in heads.items():
        torch.manual_seed(0)
        with DefaultScope.overwrite_default_scope('mmclip4clip'):
            model = MODELS.build(dict(
                type='CLIP4Clip', head=head,
                backbone=dict(type='CLIPBackbone', config=clip_config))).eval()
        for table in ('frame_position_embeddings', 'position_embeddings'):
            if hasattr(model.head, table):  # as large as the frame features
                getattr(model.head, table).weight.normal_()
        forward = model.sim_matrix(ids, (ids > 0).long(), frames, mask)
        backward = model.sim_matrix(ids, (ids > 0).long(), frames.flip(1),
                                    mask)
        gap = (forward - backward).abs().max() / forward.abs().max()
        if name == 'meanP':
            assert gap < 1e-5
        else:
            assert gap > 1e-3, name
