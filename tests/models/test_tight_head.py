"""tightTransf: the documented cross-encoder formula, per-pair loop, chunking,
padding, and end-to-end training and evaluation inside CLIP4Clip."""
import math

import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import MODELS, DefaultScope

import mmclip4clip  # noqa: F401
from mmclip4clip.models.heads import TightTransfHead

D, T = 64, 5


def make_head(**kwargs) -> TightTransfHead:
    torch.manual_seed(0)
    return TightTransfHead(D, num_layers=2, max_positions=16, **kwargs).eval()


def features(n=3, m=4, lengths=(5, 3, 1, 2), seed=1):
    gen = torch.Generator().manual_seed(seed)
    text = torch.randn(n, D, generator=gen)
    frames = torch.randn(m, T, D, generator=gen)
    mask = torch.zeros(m, T, dtype=torch.long)
    for i, k in enumerate(lengths):
        mask[i, :k] = 1
    return text, frames, mask


def reference_pair_logit(head: TightTransfHead, text: torch.Tensor,
                         frames: torch.Tensor) -> torch.Tensor:
    """The tight head's formula (docs/models.md#tight-head) written out for ONE
    pair of real frames only (no padding, so no mask): explicit attention per
    head, eps-1e-12 norms."""
    x = torch.cat([text[None], frames]) + head.position_embeddings.weight[
        :1 + len(frames)]  # [S, D]
    for block in head.transformer.resblocks:
        h = F.layer_norm(x, (D, ), block.ln_1.weight, block.ln_1.bias, 1e-12)
        q, k, v = (h @ block.attn.in_proj_weight.t()
                   + block.attn.in_proj_bias).chunk(3, dim=-1)
        heads = head.transformer.heads
        outs = []
        for hq, hk, hv in zip(q.chunk(heads, -1), k.chunk(heads, -1),
                              v.chunk(heads, -1), strict=True):
            att = torch.softmax(hq @ hk.t() / math.sqrt(hq.shape[-1]), -1)
            outs.append(att @ hv)
        x = x + block.attn.out_proj(torch.cat(outs, -1))
        h = F.layer_norm(x, (D, ), block.ln_2.weight, block.ln_2.bias, 1e-12)
        h = block.mlp.c_fc(h)
        x = x + block.mlp.c_proj(h * torch.sigmoid(1.702 * h))
    pooled = F.layer_norm(x[0], (D, ), head.pooler_ln.weight,
                          head.pooler_ln.bias, 1e-12)
    pooled = head.pooler_dense(pooled)
    pooled = pooled * torch.sigmoid(1.702 * pooled)
    return head.classifier(pooled)[0]


@torch.no_grad()
def test_pair_logits_equal_the_spec_formula_per_pair_on_real_frames():
    head = make_head()
    text, frames, mask = features()
    logits = head.pair_logits(text, frames, mask)
    assert logits.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            real = frames[j][mask[j].bool()]
            torch.testing.assert_close(
                logits[i, j], reference_pair_logit(head, text[i], real),
                rtol=1e-4, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize('num_layers', [1, 2, 4])
def test_evaluation_shortcuts_equal_the_per_pair_forward(num_layers):
    # Evaluation shares block 1's projections and computes only token 0 in
    # the last block; forward() runs every pair through every token.
    torch.manual_seed(0)
    head = TightTransfHead(D, num_layers=num_layers, max_positions=16).eval()
    text, frames, mask = features()
    t_idx = torch.arange(3).repeat_interleave(4)
    v_idx = torch.arange(4).repeat(3)
    per_pair = head(text[t_idx], frames[v_idx], mask[v_idx]).view(3, 4)
    torch.testing.assert_close(head.pair_logits(text, frames, mask, 5),
                               per_pair, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('with_cp', [False, True])
@pytest.mark.parametrize('num_layers', [1, 2, 4])
def test_evaluation_path_equals_the_training_forward_in_float64(num_layers,
                                                                 with_cp):
    # One block implementation: the evaluation shortcuts (shared first-block
    # q/k/v, token 0 only in the last block) must compute exactly what the
    # training forward computes with dropout off, padded frames included.
    torch.manual_seed(0)
    head = TightTransfHead(D, num_layers=num_layers, max_positions=16,
                           dropout=0.0, with_cp=with_cp).double()
    for param in head.parameters():  # far from the near-uniform init
        param.data.normal_(std=0.3)
    text, frames, mask = features(n=4, m=5, lengths=(5, 3, 1, 2, 4), seed=7)
    text, frames = text.double(), frames.double()
    frames[mask == 0] = 50 * torch.randn(int((mask == 0).sum()), D,
                                         dtype=torch.float64)
    trained = head.train().pair_logits(text, frames, mask, chunk_size=7)
    with torch.no_grad():
        evaluated = head.eval().pair_logits(text, frames, mask, chunk_size=7)
    assert trained.requires_grad
    torch.testing.assert_close(evaluated, trained.detach(), rtol=1e-10,
                               atol=1e-10)


def test_state_dict_keys_keep_the_clip_block_layout():
    # Converters and checkpoints name the blocks as OpenAI's CLIP does.
    prefix = 'transformer.resblocks.0.'
    block_keys = {key[len(prefix):]
                  for key in TightTransfHead(D, num_layers=1).state_dict()
                  if key.startswith(prefix)}
    assert block_keys == {
        'ln_1.weight', 'ln_1.bias', 'attn.in_proj_weight', 'attn.in_proj_bias',
        'attn.out_proj.weight', 'attn.out_proj.bias', 'ln_2.weight',
        'ln_2.bias', 'mlp.c_fc.weight', 'mlp.c_fc.bias', 'mlp.c_proj.weight',
        'mlp.c_proj.bias'}


def test_attention_blocks_start_as_torch_multihead_attention_does():
    # Same parameters, same init draws, same outputs as nn.MultiheadAttention
    # (which the blocks used before), so seeded runs are unchanged.
    from mmclip4clip.models.heads import CrossAttention
    torch.manual_seed(5)
    ours = CrossAttention(D, 4)
    torch.manual_seed(5)
    theirs = torch.nn.MultiheadAttention(D, 4, batch_first=True)
    for name, param in theirs.named_parameters():
        assert torch.equal(dict(ours.named_parameters())[name], param), name
    x = torch.randn(3, T, D)
    real = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    bias = (1.0 - real.float()) * -1e6  # [B, S]
    expected = theirs(x, x, x, attn_mask=bias[:, None].expand(3, T, T)
                      .repeat_interleave(4, dim=0), need_weights=False)[0]
    torch.testing.assert_close(ours(ours.project(x), bias), expected,
                               rtol=1e-5, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize('chunk', [1, 5, 7, 12, 1000])
def test_chunked_evaluation_equals_unchunked(chunk):
    head = make_head()
    text, frames, mask = features()
    whole = head.pair_logits(text, frames, mask, chunk_size=12)
    torch.testing.assert_close(
        head.pair_logits(text, frames, mask, chunk_size=chunk), whole,
        rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_padded_frames_change_nothing():
    head = make_head()
    text, frames, mask = features()
    garbage = frames.clone()
    pad = mask == 0
    garbage[pad] = 1e3 * torch.randn(int(pad.sum()), D)
    torch.testing.assert_close(head.pair_logits(text, garbage, mask),
                               head.pair_logits(text, frames, mask))


@torch.no_grad()
def test_frame_order_changes_the_logit():
    head = make_head()
    # Weights large enough that attention is far from uniform (at the
    # N(0, 0.02) init every token attends almost evenly).
    head.position_embeddings.weight.normal_()
    for param in head.transformer.parameters():
        if param.dim() == 2:
            param.normal_(std=0.2)
    text, frames, _ = features()
    mask = torch.ones(frames.shape[:2], dtype=torch.long)
    gap = head.pair_logits(text, frames, mask) - head.pair_logits(
        text, frames.flip(1), mask)
    spread = head.pair_logits(text, frames, mask).std()
    assert gap.abs().mean() > 0.05 * spread


def test_too_many_frames_for_the_position_table_is_an_error():
    head = TightTransfHead(D, num_layers=1, max_positions=4)
    with pytest.raises(ValueError, match='position table'):
        head(torch.randn(1, D), torch.randn(1, 4, D), torch.ones(1, 4))


def test_peak_memory_of_evaluation_is_set_by_the_chunk():
    """The largest tensor alive during scoring grows with the chunk, not
    with N x M: count the elements of every activation the blocks see."""
    head = make_head()
    text, frames, mask = features(n=6, m=4)
    largest = []
    hook = head.transformer.resblocks[0].mlp.register_forward_hook(
        lambda mod, args, out: largest.append(out.numel()))
    with torch.no_grad():
        head.pair_logits(text, frames, mask, chunk_size=5)
    hook.remove()
    assert max(largest) == 5 * (1 + T) * D
    assert len(largest) == math.ceil(6 * 4 / 5)


def build_tight_model(clip_config, **head_kwargs):
    head = dict(type='TightTransfHead', embed_dim=32, num_layers=2,
                num_heads=2, max_positions=16, **head_kwargs)
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        return MODELS.build(dict(
            type='CLIP4Clip', head=head,
            backbone=dict(type='CLIPBackbone', config=clip_config)))


def tiny_batch(b=3, t=4):
    gen = torch.Generator().manual_seed(3)
    return dict(
        frames=torch.randn(b, t, 3, 16, 16, generator=gen),
        frame_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]),
        input_ids=torch.tensor([[62, 5, 6, 63], [62, 7, 63, 0],
                                [62, 8, 9, 63]]),
        attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0],
                                     [1, 1, 1, 1]]),
        text_video_index=torch.arange(b))


def test_training_loss_is_infonce_over_in_batch_pair_logits(clip_config):
    model = build_tight_model(clip_config, dropout=0.0)
    inputs = tiny_batch()
    loss = model(inputs, mode='loss')['loss']
    logits = model.sim_matrix(inputs['input_ids'], inputs['attention_mask'],
                              inputs['frames'], inputs['frame_mask'])
    target = torch.arange(3)
    expected = (F.cross_entropy(logits, target)
                + F.cross_entropy(logits.t(), target)) / 2
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    for name, param in model.head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@torch.no_grad()
def test_sim_matrix_equals_head_on_raw_clip_features(clip_config):
    model = build_tight_model(clip_config).eval()
    inputs = tiny_batch()
    text = model.backbone.encode_text(inputs['input_ids'])
    frames = model.backbone.encode_frames(inputs['frames'],
                                          inputs['frame_mask'])
    torch.testing.assert_close(
        model.sim_matrix(inputs['input_ids'], inputs['attention_mask'],
                         inputs['frames'], inputs['frame_mask']),
        model.head.pair_logits(text, frames, inputs['frame_mask']))


@torch.no_grad()
def test_predict_keeps_frame_features_and_mask_for_the_loop(clip_config):
    from mmengine.structures import BaseDataElement

    from mmclip4clip.engine.retrieval_loops import assemble_result

    model = build_tight_model(clip_config, chunk_size=2).eval()
    inputs = tiny_batch()
    samples = [BaseDataElement(metainfo=dict(sample_idx=i, video_id=str(i),
                                             captions=[f'c{i}']))
               for i in range(3)]
    out = model(inputs, samples, mode='predict')
    assert out[1].video_emb.shape == (4, 32)
    assert out[1].video_mask.tolist() == [1, 1, 0, 0]
    result = assemble_result(model, out)
    torch.testing.assert_close(
        result['scores'].full(),
        model.sim_matrix(inputs['input_ids'], inputs['attention_mask'],
                         inputs['frames'], inputs['frame_mask']))
