"""RetrievalMetric on per-video data samples, as mmengine's standard
ValLoop / TestLoop feed it, against mmaction2's own RetrievalMetric."""
import pickle

import pytest
import torch
from mmaction.evaluation import RetrievalMetric as MMActionRetrievalMetric
from mmengine.evaluator import Evaluator
from mmengine.structures import BaseDataElement, InstanceData

from mmclip4clip.evaluation.functional import rank_metrics
from mmclip4clip.evaluation.metrics.retrieval_metric import RetrievalMetric

NAMES = ('R1', 'R5', 'R10', 'MdR', 'MnR')


def brute_t2v(scores: torch.Tensor, gt: torch.Tensor) -> list[int]:
    """1 + number of videos scored strictly higher than the ground truth."""
    rows, gt = scores.double().tolist(), gt.tolist()
    return [1 + sum(s > row[g] for s in row) for row, g in zip(rows, gt)]


def mmaction2_sample(video: torch.Tensor, text: torch.Tensor,
                     **metainfo) -> BaseDataElement:
    """A data sample as mmaction2's CLIPSimilarity.predict leaves it; K
    captions' [K, D] texts do not fit its InstanceData (fields of one
    length), so they come in a BaseDataElement."""
    sample = BaseDataElement(metainfo=metainfo)
    kind = InstanceData if text.dim() == 1 else BaseDataElement
    sample.features = kind(video_feature=video, text_feature=text)
    return sample


def our_sample(video: torch.Tensor, text: torch.Tensor,
               **metainfo) -> BaseDataElement:
    """A data sample as our CLIP4Clip.predict leaves it (loose head)."""
    sample = BaseDataElement(metainfo=metainfo)
    sample.video_emb, sample.text_emb = video, text
    return sample


def evaluate_batches(metrics: list, batches: list[list], size: int) -> dict:
    """What mmengine's ValLoop does with the model's outputs."""
    evaluator = Evaluator(metrics)
    for batch in batches:
        evaluator.process(data_samples=batch, data_batch=None)
    return evaluator.evaluate(size)


def batched(samples: list, size: int) -> list[list]:
    return [samples[i:i + size] for i in range(0, len(samples), size)]


def random_features(num: int, dim: int, seed: int):
    """Unnormalised video and text features, the texts near their video."""
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(num, dim, generator=gen) * 3
    text = video + 4 * torch.randn(num, dim, generator=gen)
    return video, text


def cosine(text: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    return (text / text.norm(dim=1, keepdim=True)) @ (
        video / video.norm(dim=1, keepdim=True)).T


# -------------------------------------------------------------- metric_list
def test_metric_list_selects_the_reported_metrics_in_both_directions():
    video, text = random_features(12, 8, seed=0)
    samples = [mmaction2_sample(v, t) for v, t in zip(video, text)]
    full = evaluate_batches([RetrievalMetric()], [samples], 12)
    assert sorted(full) == sorted(f'{d}/{n}' for d in ('t2v', 'v2t')
                                  for n in NAMES)
    some = evaluate_batches([RetrievalMetric(metric_list=('MdR', 'R5'))],
                            [samples], 12)
    assert some == {key: full[key] for key in
                    ('t2v/MdR', 't2v/R5', 'v2t/MdR', 'v2t/R5')}
    one = evaluate_batches([RetrievalMetric(metric_list='R1', dsl_tau=2.0)],
                           [samples], 12)
    assert sorted(one) == ['dsl/t2v/R1', 'dsl/v2t/R1', 't2v/R1', 'v2t/R1']


@pytest.mark.parametrize('metric_list, match', [
    (('R1', 'R50'), r"\['R50'\]"),
    ('mAP', r"\['mAP'\]"),
    ((), 'metric_list is empty'),
])
def test_unknown_metric_list_entry_is_a_value_error_naming_it(metric_list,
                                                               match):
    with pytest.raises(ValueError, match=match):
        RetrievalMetric(metric_list=metric_list)


# --------------------------------------------------- against mmaction2's
@pytest.mark.parametrize('seed', range(3))
def test_one_caption_per_video_without_ties_equals_mmaction2(seed):
    video, text = random_features(40, 8, seed)
    scores = cosine(text, video)
    assert len(scores.flatten().unique()) == scores.numel()  # no ties
    samples = [mmaction2_sample(v, t) for v, t in zip(video, text)]
    metrics = evaluate_batches(
        [RetrievalMetric(), MMActionRetrievalMetric()], batched(samples, 7),
        len(samples))
    for name in NAMES:
        assert metrics[f't2v/{name}'] == pytest.approx(
            float(metrics[f'retrieval/{name}']), abs=1e-9), name
    expected = rank_metrics(torch.tensor(brute_t2v(scores, torch.arange(40))))
    assert {n: metrics[f't2v/{n}'] for n in NAMES} == pytest.approx(expected)
    # Not trivially perfect, so the comparison means something.
    assert 0 < metrics['t2v/R1'] < 100 and metrics['t2v/MnR'] > 1.5


def test_tied_scores_rank_once_where_mmaction2_counts_a_caption_twice():
    """Videos 0 and 1 are identical, so captions 0 and 1 tie them at the
    top: both rank 1 (ties do not push the ground truth down), while
    mmaction2's np.where finds each of these rows twice (positions 0 and
    1), so its R1 is 4 of 6 entries."""
    gen = torch.Generator().manual_seed(0)
    video = torch.randn(4, 8, generator=gen)
    video[1] = video[0]
    text = video.clone()
    samples = [mmaction2_sample(v, t) for v, t in zip(video, text)]
    metrics = evaluate_batches(
        [RetrievalMetric(), MMActionRetrievalMetric()], [samples], 4)
    assert brute_t2v(cosine(text, video), torch.arange(4)) == [1, 1, 1, 1]
    assert metrics['t2v/R1'] == 100.0 and metrics['t2v/MnR'] == 1.0
    assert metrics['retrieval/R1'] == pytest.approx(400 / 6)
    assert metrics['retrieval/MnR'] == pytest.approx(1 + 2 / 6)


# ------------------------------------------------- multi-caption and order
def test_multi_caption_samples_equal_the_full_result_both_directions(
        tmp_path):
    """[K, D] text features (either form) -> the same metrics and dump as
    the one full result with the cosine matrix."""
    gen = torch.Generator().manual_seed(3)
    counts = [1, 3, 2, 1, 4, 2]
    video = torch.randn(len(counts), 8, generator=gen)
    texts = [video[i] + torch.randn(k, 8, generator=gen)
             for i, k in enumerate(counts)]
    captions = [[f'video {i} caption {c}' for c in range(k)]
                for i, k in enumerate(counts)]
    index = torch.repeat_interleave(torch.arange(len(counts)),
                                    torch.tensor(counts))
    full = dict(scores=cosine(torch.cat(texts), video), text_video_index=index,
                video_ids=[f'v{i}' for i in range(len(counts))],
                captions=[c for caps in captions for c in caps])
    expected = evaluate_batches([RetrievalMetric()], [[full]], 1)
    ours = [our_sample(v, t, video_id=f'v{i}', captions=c, sample_idx=i)
            for i, (v, t, c) in enumerate(zip(video, texts, captions))]
    mma = [mmaction2_sample(v, t, video_id=f'v{i}')
           for i, (v, t) in enumerate(zip(video, texts))]
    dump = tmp_path / 'dump.pkl'
    got = evaluate_batches([RetrievalMetric(dump_file=str(dump))],
                           batched(ours, 4), len(ours))
    assert got == pytest.approx(expected)
    assert evaluate_batches([RetrievalMetric()], batched(mma, 4),
                            len(mma)) == pytest.approx(expected)
    with open(dump, 'rb') as f:
        payload = pickle.load(f)
    assert payload['video_ids'] == full['video_ids']
    assert payload['captions'] == full['captions']
    assert payload['text_video_index'].tolist() == index.tolist()
    torch.testing.assert_close(torch.from_numpy(payload['scores']),
                               full['scores'])


def test_repeated_sample_idx_counts_once_in_dataset_order(tmp_path):
    """A distributed sampler's padding repeats samples; they count once and
    the rows follow sample_idx whatever the order they arrive in."""
    video, text = random_features(9, 8, seed=5)
    samples = [our_sample(v, t[None], sample_idx=i, video_id=f'v{i}')
               for i, (v, t) in enumerate(zip(video, text))]
    expected = evaluate_batches([RetrievalMetric()], batched(samples, 4), 9)
    shuffled = [samples[i] for i in (4, 0, 7, 2, 8, 1, 3, 6, 5)]
    padded = shuffled + [samples[4], samples[0], samples[7]]
    dump = tmp_path / 'dump.pkl'
    got = evaluate_batches([RetrievalMetric(dump_file=str(dump))],
                           batched(padded, 4), len(padded))
    assert got == pytest.approx(expected)
    with open(dump, 'rb') as f:
        assert pickle.load(f)['video_ids'] == [f'v{i}' for i in range(9)]


# ------------------------------------------------------------------ errors
def test_tight_head_samples_are_refused_pointing_at_our_loop():
    sample = our_sample(torch.randn(4, 8), torch.randn(2, 8))
    sample.video_mask = torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match='RetrievalValLoop'):
        evaluate_batches([RetrievalMetric()], [[sample]], 1)


@pytest.mark.parametrize('sample, match', [
    (BaseDataElement(metainfo=dict(video_id='a')),
     r"neither 'video_emb' and 'text_emb'.*nor 'features'.*\['video_id'\]"),
    (BaseDataElement(features=InstanceData(video_feature=torch.randn(8))),
     r"\['features.text_feature'\]"),
    (our_sample(torch.randn(8), torch.randn(2, 6)),
     r"'video_emb' must be \[D\] and 'text_emb' \[D\] or \[K, D\]"),
    (our_sample(torch.randn(8), torch.zeros(2, 8, dtype=torch.long)),
     r"'text_emb' must be a float Tensor"),
])
def test_malformed_samples_are_value_errors_naming_the_key(sample, match):
    with pytest.raises(ValueError, match=match):
        RetrievalMetric().process(None, [sample])


def test_full_result_and_data_samples_do_not_mix():
    video, text = random_features(3, 8, seed=0)
    full = dict(scores=cosine(text, video), text_video_index=torch.arange(3),
                video_ids=['a', 'b', 'c'], captions=['x', 'y', 'z'])
    metric = RetrievalMetric()
    metric.process(None, [full])
    with pytest.raises(ValueError, match='data samples after full result'):
        metric.process(None, [mmaction2_sample(video[0], text[0])])
    metric = RetrievalMetric()
    metric.process(None, [mmaction2_sample(video[0], text[0])])
    with pytest.raises(ValueError, match='full result after data samples'):
        metric.process(None, [full])


def test_zero_embedding_is_an_error_naming_the_caption():
    video, text = random_features(3, 8, seed=0)
    text[1] = 0
    samples = [mmaction2_sample(v, t) for v, t in zip(video, text)]
    with pytest.raises(ValueError, match='caption embedding 1'):
        evaluate_batches([RetrievalMetric()], [samples], 3)
