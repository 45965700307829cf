"""CLIPBackbone: text and frame features against slow per-row paths."""
import pytest
import torch
from mmengine.registry import MODELS, DefaultScope
from transformers import CLIPConfig, CLIPModel

import mmclip4clip  # noqa: F401  (registers the components)
from mmclip4clip.models.backbones.clip import CLIPBackbone

TOL = dict(atol=1e-5, rtol=1e-4)
SEQ_LEN = 12
NUM_FRAMES = 4


@pytest.fixture(scope='module')
def backbone(make_clip_config) -> CLIPBackbone:
    torch.manual_seed(0)
    return CLIPBackbone(config=make_clip_config()).eval()


@pytest.fixture(scope='module')
def frames_and_mask(backbone) -> tuple[torch.Tensor, torch.Tensor]:
    """4 videos of 4 frames: full, half, one frame, and no real frame."""
    size = backbone.image_size
    gen = torch.Generator().manual_seed(1)
    frames = torch.randn(4, NUM_FRAMES, 3, size, size, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0],
                         [0, 0, 0, 0]])
    return frames, mask


def slow_text_feature(clip: CLIPModel, ids_row: torch.Tensor,
                      eot: int) -> torch.Tensor:
    """One caption, cut right after its end token, through the text tower.

    ``text_projection(final_layer_norm(h)[end position])`` with ``h`` the
    last encoder layer's output (``last_hidden_state`` already has the final
    norm applied, so the pre-norm hidden state is taken explicitly).
    """
    pos = ids_row.tolist().index(eot)
    out = clip.text_model(input_ids=ids_row[None, :pos + 1],
                          output_hidden_states=True)
    hidden = out.hidden_states[-1][0, pos]
    return clip.text_projection(clip.text_model.final_layer_norm(hidden))


def slow_image_feature(clip: CLIPModel, image: torch.Tensor) -> torch.Tensor:
    """One image alone: ``visual_projection(post_layernorm(h_cls))``."""
    out = clip.vision_model(pixel_values=image[None])
    cls = out.last_hidden_state[0, 0]
    return clip.visual_projection(clip.vision_model.post_layernorm(cls))


@torch.no_grad()
def test_encode_text_equals_projected_final_norm_at_end_token(
        backbone, make_token_ids, special_tokens):
    # Lengths include an empty caption and one that fills the whole row.
    ids, mask = make_token_ids([3, 0, 7, SEQ_LEN - 2, 1], SEQ_LEN)
    fast = backbone.encode_text(ids, mask)
    slow = torch.stack([
        slow_text_feature(backbone.clip, row, special_tokens['eot'])
        for row in ids
    ])
    assert fast.shape == (len(ids), backbone.embed_dim)
    torch.testing.assert_close(fast, slow, **TOL)


@torch.no_grad()
def test_encode_text_ignores_tokens_after_end_token(
        backbone, make_token_ids, special_tokens):
    ids, mask = make_token_ids([2, 5, 0], SEQ_LEN)
    gen = torch.Generator().manual_seed(2)
    garbage = torch.randint(1, special_tokens['max_word'] + 1, ids.shape,
                            generator=gen)
    after_end = ids == special_tokens['pad']
    changed = torch.where(after_end, garbage, ids)
    assert not torch.equal(changed, ids)
    reference = backbone.encode_text(ids, mask)
    # With the padding mask and with a full mask (garbage attended to).
    torch.testing.assert_close(backbone.encode_text(changed, mask),
                               reference, **TOL)
    torch.testing.assert_close(
        backbone.encode_text(changed, torch.ones_like(mask)), reference,
        **TOL)

    # Control: a word BEFORE the end token does change the feature.
    before = ids.clone()
    before[1, 1] = before[1, 1] % special_tokens['max_word'] + 1
    moved = backbone.encode_text(before, mask)
    assert not torch.allclose(moved[1], reference[1], **TOL)
    torch.testing.assert_close(moved[[0, 2]], reference[[0, 2]], **TOL)


@torch.no_grad()
def test_encode_text_runs_only_up_to_the_longest_caption(
        backbone, make_token_ids):
    ids, mask = make_token_ids([2, 5, 3], SEQ_LEN, seed=4)
    padded = torch.zeros(3, 40, dtype=ids.dtype)
    padded[:, :SEQ_LEN] = ids
    padded_mask = torch.zeros(3, 40, dtype=mask.dtype)
    padded_mask[:, :SEQ_LEN] = mask
    seen = []
    hook = backbone.clip.text_model.embeddings.register_forward_hook(
        lambda module, args, kwargs_out: seen.append(kwargs_out.shape[1]))
    try:
        short = backbone.encode_text(ids, mask)
        long = backbone.encode_text(padded, padded_mask)
    finally:
        hook.remove()
    assert seen == [7, 7]  # SOT + 5 words + EOT
    torch.testing.assert_close(long, short, **TOL)


@torch.no_grad()
def test_encode_text_attention_mask_changes_nothing(backbone,
                                                    make_token_ids):
    ids, mask = make_token_ids([4, 1, 6], SEQ_LEN, seed=3)
    torch.testing.assert_close(backbone.encode_text(ids, None),
                               backbone.encode_text(ids, mask), **TOL)


@torch.no_grad()
def test_encode_images_equals_projected_post_norm_cls_per_image(
        backbone, frames_and_mask):
    images = frames_and_mask[0][0]  # [T, 3, H, W]
    fast = backbone.encode_images(images)
    slow = torch.stack([slow_image_feature(backbone.clip, im)
                        for im in images])
    assert fast.shape == (len(images), backbone.embed_dim)
    torch.testing.assert_close(fast, slow, **TOL)


@torch.no_grad()
def test_encode_frames_equals_per_frame_loop_with_zero_padding(
        backbone, frames_and_mask):
    frames, mask = frames_and_mask
    fast = backbone.encode_frames(frames, mask)
    b, t = mask.shape
    assert fast.shape == (b, t, backbone.embed_dim)
    for i in range(b):
        for j in range(t):
            if mask[i, j]:
                expected = backbone.encode_images(frames[i, j][None])[0]
                torch.testing.assert_close(fast[i, j], expected, **TOL)
            else:
                assert torch.equal(fast[i, j], torch.zeros_like(fast[i, j]))


@torch.no_grad()
def test_encode_frames_ignores_content_of_padded_frames(backbone,
                                                        frames_and_mask):
    frames, mask = frames_and_mask
    gen = torch.Generator().manual_seed(4)
    garbage = 100 * torch.randn(frames.shape, generator=gen)
    padded = (mask == 0)[..., None, None, None]
    changed = torch.where(padded, garbage, frames)
    assert not torch.equal(changed, frames)
    torch.testing.assert_close(backbone.encode_frames(changed, mask),
                               backbone.encode_frames(frames, mask), **TOL)


def test_encode_frames_batch_without_real_frame_gives_zeros(
        backbone, frames_and_mask):
    frames = frames_and_mask[0][:2]
    mask = torch.zeros(frames.shape[:2], dtype=torch.long)
    out = backbone.encode_frames(frames, mask)
    assert torch.equal(out, out.new_zeros(2, NUM_FRAMES, backbone.embed_dim))


@torch.no_grad()
def test_loading_hugging_face_directory_gives_identical_outputs(
        tmp_path, clip_config, make_token_ids, special_tokens,
        frames_and_mask):
    torch.manual_seed(5)
    source = CLIPModel(CLIPConfig(**clip_config)).eval()
    source.save_pretrained(tmp_path / 'clip')
    loaded = CLIPBackbone(pretrained=str(tmp_path / 'clip')).eval()

    expected_state = source.state_dict()
    state = loaded.clip.state_dict()
    assert state.keys() == expected_state.keys()
    for name, value in expected_state.items():
        assert torch.equal(state[name], value), name

    ids, mask = make_token_ids([3, 6], SEQ_LEN, seed=6)
    text = torch.stack([slow_text_feature(source, row, special_tokens['eot'])
                        for row in ids])
    torch.testing.assert_close(loaded.encode_text(ids, mask), text, **TOL)

    frames, frame_mask = frames_and_mask
    video = loaded.encode_frames(frames, frame_mask)
    real = frame_mask.bool()
    image = torch.stack([slow_image_feature(source, f)
                         for f in frames[real]])
    torch.testing.assert_close(video[real], image, **TOL)
    assert torch.equal(loaded.logit_scale.detach(),
                       source.logit_scale.detach())


def test_missing_pretrained_directory_error_names_the_path(tmp_path):
    missing = str(tmp_path / 'no_such_clip')
    with pytest.raises(OSError) as info:
        CLIPBackbone(pretrained=missing)
    assert missing in str(info.value)


def test_pretrained_directory_without_clip_files_error_names_the_path(
        tmp_path):
    empty = tmp_path / 'empty_dir'
    empty.mkdir()
    with pytest.raises(OSError) as info:
        CLIPBackbone(pretrained=str(empty))
    assert str(empty) in str(info.value)


@pytest.mark.parametrize('give', ['both', 'neither'])
def test_needs_exactly_one_of_pretrained_and_config(give, tmp_path,
                                                    clip_config):
    kwargs = dict(pretrained=str(tmp_path), config=clip_config) \
        if give == 'both' else {}
    with pytest.raises(ValueError):
        CLIPBackbone(**kwargs)


def test_builds_from_registry_and_exposes_clip_logit_scale(clip_config):
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        backbone = MODELS.build(dict(type='CLIPBackbone',
                                     config=clip_config))
    assert isinstance(backbone, CLIPBackbone)
    assert backbone.logit_scale is backbone.clip.logit_scale
    assert backbone.embed_dim == clip_config['projection_dim']
    assert backbone.image_size == clip_config['vision_config']['image_size']


def test_transformers_internals_the_backbone_reads_are_checked_at_build(
        clip_config, monkeypatch):
    # The towers run block by block on transformers' private layout; a
    # release that renames a part must fail at construction, naming it.
    import mmclip4clip.models.backbones.clip as clip_module
    changed = clip_module.build_clip(config=clip_config)
    del changed.vision_model.pre_layrnorm
    del changed.text_model.encoder.layers[0].self_attn.scale
    monkeypatch.setattr(clip_module, 'build_clip', lambda *args: changed)
    with pytest.raises(RuntimeError) as err:
        CLIPBackbone(config=clip_config)
    assert 'vision_model.pre_layrnorm' in str(err.value)
    assert 'text_model.encoder.layers[0].self_attn.scale' in str(err.value)
    assert 'transformers>=5,<6' in str(err.value)
