"""Initialisation from CLIP (heads, 3-D patch), freeze_layer_num and the
optimiser groups of the recipe (docs/models.md#encoders, #heads and
docs/training.md#recipe)."""
import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import MODELS, DefaultScope

import mmclip4clip  # noqa: F401
from mmclip4clip.models.backbones.clip import CLIPBackbone


def build(clip_config, head=None, **backbone):
    head = head or dict(type='MeanPHead')
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        return MODELS.build(dict(
            type='CLIP4Clip', head=head,
            backbone=dict(type='CLIPBackbone', config=clip_config,
                          **backbone)))


HEADS = [
    dict(type='SeqTransfHead', embed_dim=32, num_layers=2, num_heads=2,
         max_positions=20),
    dict(type='TightTransfHead', embed_dim=32, num_layers=2, num_heads=2,
         max_positions=20),
]


@pytest.mark.parametrize('head', HEADS, ids=['seqTransf', 'tightTransf'])
def test_heads_start_from_clip_text_positions_and_blocks(clip_config, head):
    torch.manual_seed(0)
    model = build(clip_config, head)
    text = model.backbone.clip.text_model
    table = (model.head.frame_position_embeddings if 'Seq' in head['type']
             else model.head.position_embeddings)
    ctx = text.embeddings.position_embedding.weight  # 16 rows
    assert torch.equal(table.weight[:16], ctx)
    # Rows beyond CLIP's context keep their own init.
    assert not torch.equal(table.weight[16:], torch.zeros(4, 32))
    for i, block in enumerate(model.head.transformer.resblocks):
        layer = text.encoder.layers[i]
        q, k, v = block.attn.in_proj_weight.chunk(3)
        assert torch.equal(q, layer.self_attn.q_proj.weight)
        assert torch.equal(k, layer.self_attn.k_proj.weight)
        assert torch.equal(v, layer.self_attn.v_proj.weight)
        assert torch.equal(block.attn.in_proj_bias.chunk(3)[1],
                           layer.self_attn.k_proj.bias)
        assert torch.equal(block.attn.out_proj.weight,
                           layer.self_attn.out_proj.weight)
        assert torch.equal(block.mlp.c_fc.weight, layer.mlp.fc1.weight)
        assert torch.equal(block.mlp.c_proj.bias, layer.mlp.fc2.bias)
        assert torch.equal(block.ln_2.weight, layer.layer_norm2.weight)
        # The cross blocks keep the original's eps, not CLIP's.
        assert block.ln_1.eps == 1e-12


@torch.no_grad()
def test_block_started_from_clip_computes_clip_text_layer(clip_config):
    """Copied weights mean the same function: one cross block (eps aside)
    equals the HF text layer without a causal mask."""
    model = build(clip_config, HEADS[0])
    block = model.head.transformer.resblocks[0]
    layer = model.backbone.clip.text_model.encoder.layers[0]
    block.ln_1.eps = block.ln_2.eps = layer.layer_norm1.eps
    x = torch.randn(2, 5, 32)
    expected = layer(x, None)
    expected = expected[0] if isinstance(expected, tuple) else expected
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_no_clip_init_when_disabled_or_shapes_differ(clip_config):
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        model = MODELS.build(dict(
            type='CLIP4Clip', head=HEADS[0], init_head_from_clip=False,
            backbone=dict(type='CLIPBackbone', config=clip_config)))
    ctx = model.backbone.clip.text_model.embeddings.position_embedding.weight
    assert not torch.equal(
        model.head.frame_position_embeddings.weight[:16], ctx)
    with pytest.warns(UserWarning, match='cannot start from CLIP'):
        build(clip_config, dict(HEADS[0], num_layers=3))  # CLIP has 2


# ---- linear patch 3d ------------------------------------------------------
def frames_and_mask(size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randn(3, 4, 3, size, size, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    frames[mask == 0] = 0  # padded frames are zero (data preprocessor)
    return frames, mask


@torch.no_grad()
def test_3d_patch_at_initialisation_equals_2d(clip_config):
    torch.manual_seed(0)
    two = CLIPBackbone(config=clip_config).eval()
    three = CLIPBackbone(config=clip_config, linear_patch='3d').eval()
    three.clip.load_state_dict(two.clip.state_dict())
    three.conv2 = three.conv3d_from_patch_conv()
    frames, mask = frames_and_mask()
    torch.testing.assert_close(three.encode_frames(frames, mask),
                               two.encode_frames(frames, mask),
                               rtol=1e-5, atol=1e-5)
    w = three.conv2.weight
    assert w.shape == (32, 3, 3, 4, 4)
    assert torch.equal(w[:, :, 1],
                       two.clip.vision_model.embeddings.patch_embedding.weight)
    assert not w[:, :, 0].any() and not w[:, :, 2].any()


@torch.no_grad()
def test_3d_tokens_are_three_2d_convolutions_over_neighbour_frames(
        clip_config):
    torch.manual_seed(0)
    backbone = CLIPBackbone(config=clip_config, linear_patch='3d').eval()
    backbone.conv2.weight.normal_(std=0.1)
    frames, mask = frames_and_mask()
    tokens = backbone.patch_tokens_3d(frames)  # [B, T, P, W]
    w = backbone.conv2.weight
    zero = torch.zeros_like(frames[:, 0])
    for t in range(4):
        prev = frames[:, t - 1] if t > 0 else zero
        nxt = frames[:, t + 1] if t < 3 else zero
        expected = sum(F.conv2d(x, w[:, :, k], stride=4)
                       for k, x in enumerate((prev, frames[:, t], nxt)))
        torch.testing.assert_close(
            tokens[:, t], expected.flatten(2).transpose(1, 2),
            rtol=1e-5, atol=1e-5)
    # The rest of the tower is CLIP's: the 2-D patch tokens give encode_images.
    conv = backbone.clip.vision_model.embeddings.patch_embedding
    tokens_2d = conv(frames[0]).flatten(2).transpose(1, 2)
    torch.testing.assert_close(backbone.encode_patch_tokens(tokens_2d),
                               backbone.encode_images(frames[0]),
                               rtol=1e-5, atol=1e-5)
    feats = backbone.encode_frames(frames, mask)
    torch.testing.assert_close(
        feats[1, 1], backbone.encode_patch_tokens(tokens[1, 1:2])[0],
        rtol=1e-5, atol=1e-5)
    assert not feats[1, 2:].any()


def test_3d_rejects_wrong_frame_size(clip_config):
    backbone = CLIPBackbone(config=clip_config, linear_patch='3d')
    with pytest.raises(ValueError, match='16x16'):
        backbone.encode_frames(torch.zeros(1, 2, 3, 32, 32), torch.ones(1, 2))
    with pytest.raises(ValueError, match='linear_patch'):
        CLIPBackbone(config=clip_config, linear_patch='2.5d')


# ---- freeze_layer_num -----------------------------------------------------
def trainable(backbone):
    return {n for n, p in backbone.named_parameters() if p.requires_grad}


def test_freeze_layer_num_follows_the_original_rule(clip_config):
    everything = {n for n, _ in CLIPBackbone(config=clip_config)
                  .named_parameters()}
    assert trainable(CLIPBackbone(config=clip_config)) == everything
    backbone = CLIPBackbone(config=clip_config, linear_patch='3d',
                            freeze_layer_num=1)
    expected = {n for n in everything | {'conv2.weight'}
                if n.startswith(('clip.text_model.encoder.layers.1.',
                                 'clip.vision_model.encoder.layers.1.',
                                 'clip.text_model.final_layer_norm.',
                                 'clip.vision_model.post_layernorm.',
                                 'clip.text_projection.',
                                 'clip.visual_projection.',
                                 'clip.logit_scale', 'conv2.'))}
    assert trainable(backbone) == expected
    # 0 still freezes the embeddings and ln_pre; blocks all train.
    zero = trainable(CLIPBackbone(config=clip_config, freeze_layer_num=0))
    assert 'clip.vision_model.embeddings.class_embedding' not in zero
    assert 'clip.vision_model.pre_layrnorm.weight' not in zero
    assert 'clip.text_model.embeddings.token_embedding.weight' not in zero
    assert 'clip.text_model.encoder.layers.0.mlp.fc1.weight' in zero


def test_frozen_parameters_do_not_change_in_a_training_step(clip_config):
    from mmengine.optim import build_optim_wrapper

    model = build(clip_config, HEADS[0], freeze_layer_num=1)
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        wrapper = build_optim_wrapper(model, dict(
            constructor='CLIP4ClipOptimWrapperConstructor',
            optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.2),
            paramwise_cfg=dict(coef_lr=0.1, norm_decay_mult=0.0,
                               bias_decay_mult=0.0)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    inputs = dict(
        frames=torch.randn(2, 3, 3, 16, 16),
        frame_mask=torch.ones(2, 3, dtype=torch.long),
        input_ids=torch.tensor([[62, 5, 63], [62, 7, 63]]),
        attention_mask=torch.ones(2, 3, dtype=torch.long),
        text_video_index=torch.arange(2))
    wrapper.update_params(model(inputs, mode='loss')['loss'])
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == param.requires_grad, name


# ---- optimiser groups -----------------------------------------------------
def test_coef_lr_scales_clip_and_decay_skips_norms_and_biases(clip_config):
    from mmengine.optim import build_optim_wrapper

    model = build(clip_config, HEADS[0], linear_patch='3d')
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        wrapper = build_optim_wrapper(model, dict(
            constructor='CLIP4ClipOptimWrapperConstructor',
            optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.2),
            paramwise_cfg=dict(coef_lr=1e-3, norm_decay_mult=0.0,
                               bias_decay_mult=0.0)))
    names = {id(p): n for n, p in model.named_parameters()}
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)
             for p in m.parameters()}
    seen = set()
    for group in wrapper.optimizer.param_groups:
        (param, ) = group['params']
        name = names[id(param)]
        seen.add(name)
        is_clip = name.startswith('backbone.')
        assert group['lr'] == pytest.approx(1e-7 if is_clip else 1e-4), name
        no_decay = name.endswith('.bias') or id(param) in norms
        assert group['weight_decay'] == (0.0 if no_decay else 0.2), name
    assert seen == set(names.values())
    assert 'backbone.conv2.weight' in seen


def test_coef_lr_alone_still_builds_groups(clip_config):
    from mmengine.optim import build_optim_wrapper

    model = build(clip_config)
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        wrapper = build_optim_wrapper(model, dict(
            constructor='CLIP4ClipOptimWrapperConstructor',
            optimizer=dict(type='AdamW', lr=1e-4),
            paramwise_cfg=dict(coef_lr=0.5)))
    lrs = [g['lr'] for g in wrapper.optimizer.param_groups]
    assert len(lrs) > 1  # one group per parameter
    assert lrs == pytest.approx([5e-5] * len(lrs))  # meanP: all of it is CLIP
