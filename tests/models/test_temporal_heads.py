"""seqLSTM and seqTransf heads: batched equals per-video, padding is inert,
and frame order matters (unlike meanP)."""
from collections import OrderedDict

import openai_reference as ref
import pytest
import torch
import torch.nn.functional as F

from mmclip4clip.models.checkpoints.openai_clip import clip_from_openai
from mmclip4clip.models.heads import (
    MeanPHead,
    SeqLSTMHead,
    SeqTransfHead,
    TightTransfHead,
)

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


# ---- init_from_clip from either CLIP layout (issue 14 case 3) --------------
class OpenAIStyleBlock(torch.nn.Module):
    """A text block of OpenAI's clip.model.CLIP (attribute names only)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(width, width // 64)
        self.ln_1 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(OrderedDict(
            c_fc=torch.nn.Linear(width, 4 * width), gelu=torch.nn.GELU(),
            c_proj=torch.nn.Linear(4 * width, width)))
        self.ln_2 = torch.nn.LayerNorm(width)


class OpenAIStyleCLIP(torch.nn.Module):
    """The text side of OpenAI's ``clip.model.CLIP``, the CLIP inside
    mmaction2's CLIPSimilarity, holding an OpenAI state dict's text keys."""

    def __init__(self, sd: dict) -> None:
        super().__init__()
        ctx, width = sd['positional_embedding'].shape
        layers = sum(k.endswith('ln_1.weight') and k.startswith('transformer.')
                     for k in sd)
        self.token_embedding = torch.nn.Embedding(
            *sd['token_embedding.weight'].shape)
        self.positional_embedding = torch.nn.Parameter(torch.empty(ctx, width))
        self.transformer = torch.nn.Module()
        self.transformer.resblocks = torch.nn.Sequential(
            *[OpenAIStyleBlock(width) for _ in range(layers)])
        self.ln_final = torch.nn.LayerNorm(width)
        self.text_projection = torch.nn.Parameter(
            torch.empty(sd['text_projection'].shape))
        own = set(self.state_dict())
        self.load_state_dict({k: v for k, v in sd.items() if k in own})


def heads_for_layout_test():
    return {
        'seqTransf': lambda: SeqTransfHead(128, num_layers=2, max_positions=20),
        'tightTransf': lambda: TightTransfHead(128, num_layers=2,
                                               max_positions=20),
    }


@pytest.mark.parametrize('kind', ['seqTransf', 'tightTransf'])
def test_init_from_openai_layout_equals_init_from_hf_layout(kind):
    """mmaction2's CLIP (OpenAI layout) and the CLIPModel converted from
    the same weights give the head exactly the same tensors."""
    sd = ref.make_openai_state_dict(width=128, layers=2, context_length=16)
    openai_clip = OpenAIStyleCLIP(sd)
    hf_clip = clip_from_openai(sd)
    torch.manual_seed(0)
    from_openai = heads_for_layout_test()[kind]()
    torch.manual_seed(1)  # a different random start: all must be replaced
    from_hf = heads_for_layout_test()[kind]()
    from_openai.init_from_clip(openai_clip)
    from_hf.init_from_clip(hf_clip)
    table = ('frame_position_embeddings' if kind == 'seqTransf'
             else 'position_embeddings')
    assert torch.equal(getattr(from_openai, table).weight[:16],
                       sd['positional_embedding'])
    block = from_openai.transformer.resblocks[1]
    assert torch.equal(block.attn.in_proj_weight,
                       sd['transformer.resblocks.1.attn.in_proj_weight'])
    loaded = {k for k in from_hf.state_dict() if k.startswith('transformer.')}
    assert loaded, 'no cross blocks'
    for name, value in from_hf.state_dict().items():
        if name.startswith('transformer.') or name == f'{table}.weight':
            mine = from_openai.state_dict()[name]
            if name == f'{table}.weight':  # rows past CLIP's 16 keep init
                mine, value = mine[:16], value[:16]
            assert torch.equal(mine, value), name


@pytest.mark.parametrize('kind', ['seqTransf', 'tightTransf'])
def test_init_from_an_unknown_module_is_a_type_error(kind):
    head = heads_for_layout_test()[kind]()
    with pytest.raises(TypeError, match=r'torch\.nn\.modules\.linear\.Linear '
                       r'is not a CLIP model'):
        head.init_from_clip(torch.nn.Linear(2, 2))
