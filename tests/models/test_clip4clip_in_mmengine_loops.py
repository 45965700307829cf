"""CLIP4Clip evaluated by mmengine's standard ValLoop with our and with
mmaction2's RetrievalMetric, against our own RetrievalValLoop."""
from types import SimpleNamespace

import pytest
import torch
from mmaction.evaluation import RetrievalMetric as MMActionRetrievalMetric
from mmengine.evaluator import Evaluator
from mmengine.registry import MODELS, DefaultScope
from mmengine.runner import TestLoop, ValLoop
from mmengine.structures import BaseDataElement, InstanceData

import mmclip4clip  # noqa: F401  (registers the components)
from mmclip4clip.engine.retrieval_loops import RetrievalValLoop
from mmclip4clip.evaluation.metrics.retrieval_metric import RetrievalMetric

SEQ_LEN, FRAMES = 10, 3
NAMES = ('R1', 'R5', 'R10', 'MdR', 'MnR')


def build_model(clip_config: dict, head: dict):
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        return MODELS.build(dict(
            type='CLIP4Clip', head=head,
            backbone=dict(type='CLIPBackbone', config=clip_config))).eval()


def make_batches(make_token_ids, image_size: int, counts: list[int],
                 batch_size: int, seed: int = 0) -> list[dict]:
    """Collated batches as our dataset gives them: uint8 frames, ``counts[i]``
    captions of video i, metainfo as PackVideoTextInputs packs it."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, len(counts), batch_size):
        videos = range(start, min(start + batch_size, len(counts)))
        num_texts = sum(counts[i] for i in videos)
        ids, attn = make_token_ids(
            [1 + (3 * j + seed) % (SEQ_LEN - 3) for j in range(num_texts)],
            SEQ_LEN, seed=seed + start)
        mask = torch.ones(len(videos), FRAMES, dtype=torch.bool)
        mask[0, -1] = False  # one padded frame
        imgs = torch.randint(0, 256, (len(videos), FRAMES, 3, image_size,
                                      image_size), generator=gen,
                             dtype=torch.uint8)
        samples = [BaseDataElement(metainfo=dict(
            sample_idx=i, video_id=f'video{i}',
            captions=[f'caption {i}.{k}' for k in range(counts[i])]))
            for i in videos]
        index = torch.repeat_interleave(
            torch.arange(len(videos)), torch.tensor([counts[i] for i in videos]))
        batches.append(dict(
            inputs=dict(imgs=imgs, frame_mask=mask, input_ids=ids,
                        attention_mask=attn, text_video_index=index),
            data_samples=samples))
    return batches


class Batches(list):
    """A list of batches with the ``dataset`` (its length) a loop reads."""

    def __init__(self, batches: list[dict], num_videos: int) -> None:
        super().__init__(batches)
        self.dataset = range(num_videos)


def fake_runner(model) -> SimpleNamespace:
    return SimpleNamespace(model=model, call_hook=lambda *a, **k: None,
                           visualizer=SimpleNamespace())


def run_loop(loop_type, model, batches: Batches, metrics: list) -> dict:
    return loop_type(fake_runner(model), batches, Evaluator(metrics)).run()


@pytest.mark.parametrize('head', [
    dict(type='MeanPHead'),
    dict(type='SeqTransfHead', embed_dim=32, num_layers=1, num_heads=2),
])
def test_standard_val_loop_with_either_metric_matches_our_loop(
        head, make_clip_config, make_token_ids):
    model = build_model(make_clip_config(), head)
    size = model.backbone.image_size
    batches = Batches(make_batches(make_token_ids, size, [1] * 14, 4), 14)
    ours = run_loop(RetrievalValLoop, model, batches, [RetrievalMetric()])
    standard = run_loop(ValLoop, model, batches,
                        [RetrievalMetric(), MMActionRetrievalMetric()])
    assert 0 < ours['t2v/R1'] < 100  # a non-trivial ranking
    for key, value in ours.items():
        assert standard[key] == pytest.approx(value), key
    for name in NAMES:
        assert float(standard[f'retrieval/{name}']) == pytest.approx(
            ours[f't2v/{name}']), name


@pytest.mark.parametrize('standard_loop', [ValLoop, TestLoop])
def test_standard_loops_with_several_captions_match_our_loop(
        standard_loop, make_clip_config, make_token_ids):
    """mmaction2's metric cannot pair a video with K != 1 captions; ours
    reads text_emb [K, D] in either loop."""
    model = build_model(make_clip_config(), dict(type='MeanPHead'))
    counts = [1, 3, 2, 1, 2, 3, 1, 2, 2, 1]
    batches = Batches(make_batches(make_token_ids, model.backbone.image_size,
                                   counts, 3, seed=1), len(counts))
    ours = run_loop(RetrievalValLoop, model, batches, [RetrievalMetric()])
    standard = run_loop(standard_loop, model, batches, [RetrievalMetric()])
    assert standard == pytest.approx(ours)


def test_predict_sets_mmaction2_features_for_one_caption_videos_only(
        make_clip_config, make_token_ids):
    model = build_model(make_clip_config(), dict(type='MeanPHead'))
    batch = make_batches(make_token_ids, model.backbone.image_size,
                         [1, 2, 1], 3)[0]
    out = model.test_step(batch)
    assert [('features' in s) for s in out] == [True, False, True]
    for sample in (out[0], out[2]):
        assert isinstance(sample.features, InstanceData)
        assert torch.equal(sample.features.video_feature, sample.video_emb)
        assert torch.equal(sample.features.text_feature, sample.text_emb[0])
        # Views of the embeddings, no second copy.
        assert (sample.features.video_feature.data_ptr()
                == sample.video_emb.data_ptr())
    # Our loop keeps only the embeddings (and metainfo).
    kept = RetrievalValLoop._detach(out)
    assert all('features' not in s for s in kept)
    assert set(kept[0].keys()) == {'video_emb', 'text_emb'}

    tight = build_model(make_clip_config(), dict(
        type='TightTransfHead', embed_dim=32, num_layers=1, num_heads=2))
    assert all('features' not in s for s in tight.test_step(
        make_batches(make_token_ids, tight.backbone.image_size, [1, 1], 2)[0]))


class FeaturesOnlyModel(torch.nn.Module):
    """Stands in for mmaction2's CLIPSimilarity: predict sets ``features``."""

    def val_step(self, data_batch: dict) -> list[BaseDataElement]:
        for sample in data_batch['data_samples']:
            sample.features = InstanceData(video_feature=torch.randn(4),
                                           text_feature=torch.randn(4))
        return data_batch['data_samples']


def test_our_loop_refuses_a_model_without_video_emb_naming_the_standard_loop(
        make_token_ids):
    batches = Batches(make_batches(make_token_ids, 8, [1, 1], 2), 2)
    with pytest.raises(ValueError,
                       match=r"'features'.*type='ValLoop'.*RetrievalMetric"):
        run_loop(RetrievalValLoop, FeaturesOnlyModel(), batches,
                 [RetrievalMetric()])


def test_tight_head_in_the_standard_loop_is_refused_naming_our_loop(
        make_clip_config, make_token_ids):
    model = build_model(make_clip_config(), dict(
        type='TightTransfHead', embed_dim=32, num_layers=1, num_heads=2))
    batches = Batches(make_batches(make_token_ids, model.backbone.image_size,
                                   [1, 1], 2), 2)
    with pytest.raises(ValueError, match='RetrievalValLoop'):
        run_loop(ValLoop, model, batches, [RetrievalMetric()])
