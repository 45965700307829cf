"""CLIP4Clip retriever and its data preprocessor against slow paths."""
import pytest
import torch
from mmengine.registry import MODELS, DefaultScope
from mmengine.structures import BaseDataElement

import mmclip4clip  # noqa: F401  (registers the components)
from mmclip4clip.models.backbones.clip import CLIPBackbone
from mmclip4clip.models.data_preprocessors.video_text import (
    VideoTextDataPreprocessor,
)
from mmclip4clip.models.heads.loose import MeanPHead
from mmclip4clip.models.losses import SymmetricInfoNCELoss
from mmclip4clip.models.retrievers.clip4clip import CLIP4Clip

TOL = dict(atol=1e-5, rtol=1e-4)
SEQ_LEN = 10
# CLIP's pixel statistics on the [0, 1] scale
# (docs/data_preparation.md#resize-crop-and-normalisation).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FRAME_MASK = [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]


def build(cfg: dict):
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        return MODELS.build(cfg)


def model_config(clip_config: dict) -> dict:
    return dict(type='CLIP4Clip',
                backbone=dict(type='CLIPBackbone', config=clip_config),
                head=dict(type='MeanPHead'))


@pytest.fixture(scope='module')
def model(make_clip_config) -> CLIP4Clip:
    torch.manual_seed(0)
    return build(model_config(make_clip_config())).eval()


def make_frames(model: CLIP4Clip, seed: int = 1):
    """Normalised frames [B, T, 3, H, W], zero where the mask is 0."""
    mask = torch.tensor(FRAME_MASK)
    size = model.backbone.image_size
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randn(*mask.shape, 3, size, size, generator=gen)
    return frames * mask[..., None, None, None], mask


def make_inputs(model, make_token_ids, index: list[int], seed: int = 2):
    frames, mask = make_frames(model)
    words = [(3 * i + seed) % (SEQ_LEN - 2) for i in range(len(index))]
    ids, attn = make_token_ids(words, SEQ_LEN, seed=seed)
    return dict(frames=frames, frame_mask=mask, input_ids=ids,
                attention_mask=attn,
                text_video_index=torch.tensor(index))


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


@torch.no_grad()
def slow_text_emb(backbone: CLIPBackbone, ids, attn) -> torch.Tensor:
    """One caption at a time, normalised."""
    return torch.stack([
        unit(backbone.encode_text(ids[i:i + 1], attn[i:i + 1])[0])
        for i in range(len(ids))
    ])


@torch.no_grad()
def slow_video_emb(backbone: CLIPBackbone, frames, mask) -> torch.Tensor:
    """Each real frame alone through the image tower; meanP by hand."""
    videos = []
    for b in range(len(frames)):
        feats = [unit(backbone.encode_images(frames[b, t][None])[0])
                 for t in range(frames.shape[1]) if mask[b, t]]
        videos.append(unit(torch.stack(feats).mean(dim=0)))
    return torch.stack(videos)


def slow_sim(model: CLIP4Clip, inputs: dict) -> torch.Tensor:
    text = slow_text_emb(model.backbone, inputs['input_ids'],
                         inputs['attention_mask'])
    video = slow_video_emb(model.backbone, inputs['frames'],
                           inputs['frame_mask'])
    scale = model.backbone.clip.logit_scale.detach().exp()
    sim = torch.empty(len(text), len(video))
    for i in range(len(text)):
        for j in range(len(video)):
            sim[i, j] = scale * (text[i] * video[j]).sum()
    return sim


# ---- construction ----------------------------------------------------------
def test_builds_from_registry_config(clip_config):
    model = build(model_config(clip_config))
    assert isinstance(model, CLIP4Clip)
    assert isinstance(model.backbone, CLIPBackbone)
    assert isinstance(model.head, MeanPHead)
    assert isinstance(model.loss_module, SymmetricInfoNCELoss)
    assert isinstance(model.data_preprocessor, VideoTextDataPreprocessor)


# ---- modes -----------------------------------------------------------------
def test_loss_mode_equals_hand_computation(model, make_token_ids,
                                           infonce_reference):
    inputs = make_inputs(model, make_token_ids, [0, 1, 2])
    losses = model(inputs, mode='loss')
    assert set(losses) == {'loss'}
    expected = infonce_reference(slow_sim(model, inputs))
    assert losses['loss'].item() == pytest.approx(expected, rel=1e-5)

    # The loss trains the temperature and both towers.
    losses['loss'].backward()
    clip = model.backbone.clip
    try:
        for param in (clip.logit_scale, clip.text_projection.weight,
                      clip.visual_projection.weight):
            assert param.grad is not None
            assert torch.isfinite(param.grad).all()
            assert param.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)


def test_tensor_mode_and_sim_matrix_equal_scaled_cosine_of_slow_features(
        model, make_token_ids):
    # 5 captions x 3 videos: rows are texts, columns videos.
    inputs = make_inputs(model, make_token_ids, [0, 1, 2, 0, 1])
    expected = slow_sim(model, inputs)
    sim = model(inputs, mode='tensor')
    assert sim.shape == (5, 3)
    torch.testing.assert_close(sim, expected, **TOL)
    direct = model.sim_matrix(inputs['input_ids'], inputs['attention_mask'],
                              inputs['frames'], inputs['frame_mask'])
    torch.testing.assert_close(direct, expected, **TOL)


def test_predict_attaches_video_and_its_caption_embeddings(model,
                                                           make_token_ids):
    # Uneven caption counts (1, 3, 2), interleaved.
    index = [1, 0, 2, 1, 2, 1]
    inputs = make_inputs(model, make_token_ids, index)
    samples = [BaseDataElement(video_id=i) for i in range(3)]
    out = model(inputs, samples, mode='predict')
    assert len(out) == 3

    text = slow_text_emb(model.backbone, inputs['input_ids'],
                         inputs['attention_mask'])
    video = slow_video_emb(model.backbone, inputs['frames'],
                           inputs['frame_mask'])
    dim = model.backbone.embed_dim
    for i, sample in enumerate(out):
        assert sample.video_id == i
        assert sample.video_emb.shape == (dim,)
        torch.testing.assert_close(sample.video_emb, video[i], **TOL)
        rows = [j for j, v in enumerate(index) if v == i]
        assert sample.text_emb.shape == (len(rows), dim)
        torch.testing.assert_close(sample.text_emb, text[rows], **TOL)


@pytest.mark.parametrize('index', [[1, 0, 2], [0, 0, 1], [0, 1],
                                   [0, 1, 2, 2]])
def test_loss_mode_rejects_captions_not_one_per_video_in_order(
        model, make_token_ids, index):
    inputs = make_inputs(model, make_token_ids, index)
    with pytest.raises(ValueError):
        model(inputs, mode='loss')


def test_unknown_mode_raises_value_error(model, make_token_ids):
    inputs = make_inputs(model, make_token_ids, [0, 1, 2])
    with pytest.raises(ValueError, match='bogus'):
        model(inputs, mode='bogus')


# ---- data preprocessor -------------------------------------------------------
def make_raw_batch(size: int, seed: int = 3) -> dict:
    """A collated batch as the dataset gives it: uint8 frames, with
    non-zero content even in the padded frames."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.tensor(FRAME_MASK)
    imgs = torch.randint(0, 256, (*mask.shape, 3, size, size),
                         generator=gen, dtype=torch.uint8)
    ids = torch.randint(1, 60, (3, SEQ_LEN), generator=gen)
    inputs = dict(imgs=imgs, frame_mask=mask, input_ids=ids,
                  attention_mask=torch.ones_like(ids),
                  text_video_index=torch.arange(3))
    samples = [BaseDataElement(video_id=i) for i in range(3)]
    return dict(inputs=inputs, data_samples=samples)


def test_data_preprocessor_normalises_with_clip_mean_and_std():
    batch = make_raw_batch(size=4)
    imgs, mask = batch['inputs']['imgs'], batch['inputs']['frame_mask']
    frames = VideoTextDataPreprocessor()(batch)['inputs']['frames']
    assert frames.dtype == torch.float32
    assert frames.shape == imgs.shape
    b, t, c = imgs.shape[:3]
    for i in range(b):
        for j in range(t):
            for k in range(c):
                if mask[i, j]:
                    expected = (imgs[i, j, k].double() / 255 - CLIP_MEAN[k]) \
                        / CLIP_STD[k]
                    torch.testing.assert_close(frames[i, j, k].double(),
                                               expected, atol=1e-5, rtol=0)
                else:
                    assert torch.equal(frames[i, j, k],
                                       torch.zeros_like(frames[i, j, k]))


def test_data_preprocessor_passes_other_inputs_and_samples_through():
    batch = make_raw_batch(size=4)
    original = dict(batch['inputs'])
    out = build(dict(type='VideoTextDataPreprocessor'))(batch)
    inputs = out['inputs']
    assert 'imgs' not in inputs and 'frames' in inputs
    assert set(inputs) == set(original) - {'imgs'} | {'frames'}
    for key in original.keys() - {'imgs'}:
        assert torch.equal(inputs[key], original[key]), key
    assert [s.video_id for s in out['data_samples']] == [0, 1, 2]
    # The caller's batch keeps its raw frames.
    assert batch['inputs']['imgs'] is original['imgs']


def test_test_step_normalises_uint8_frames_then_predicts(model):
    batch = make_raw_batch(size=model.backbone.image_size)
    inputs = batch['inputs']
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    frames = (inputs['imgs'].float() / 255 - mean) / std
    frames = frames * inputs['frame_mask'][..., None, None, None]
    video = slow_video_emb(model.backbone, frames, inputs['frame_mask'])
    text = slow_text_emb(model.backbone, inputs['input_ids'],
                         inputs['attention_mask'])
    out = model.test_step(batch)
    for i, sample in enumerate(out):
        torch.testing.assert_close(sample.video_emb, video[i], **TOL)
        torch.testing.assert_close(sample.text_emb, text[i:i + 1], **TOL)
