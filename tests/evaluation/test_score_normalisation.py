"""Hand-computed checks of the DSL and QB-Norm re-scoring and their metrics."""
import math
import pickle

import pytest
import torch

from mmclip4clip.evaluation.functional import (
    dual_softmax,
    querybank_norm,
    rank_metrics,
    t2v_ranks,
    v2t_ranks,
)
from mmclip4clip.evaluation.metrics.retrieval_metric import RetrievalMetric

LN2 = math.log(2.0)  # exp(LN2 * s) = 2 ** s: hand-computable integer powers


def run_metric(scores: torch.Tensor, **kwargs) -> dict[str, float]:
    """Metrics of a one-caption-per-video matrix through process/evaluate."""
    metric = RetrievalMetric(**kwargs)
    num_texts, num_videos = scores.shape
    metric.process(None, [dict(
        scores=scores, text_video_index=torch.arange(num_texts),
        video_ids=[f'v{j}' for j in range(num_videos)],
        captions=[f'c{i}' for i in range(num_texts)])])
    return metric.evaluate(1)


# Video 0 is a hub: every caption scores it 3 or 4, so plain t2v ranks are
# [1, 2, 2]; QB-Norm divides column 0 by a large bank sum and fixes them.
HUB = torch.tensor([[4., 0., 0.], [3., 2., 0.], [3., 0., 2.]])


def test_querybank_norm_hand_computed_with_separate_bank_and_k():
    # bank rows' top-1: columns 0 and 2 -> activation set {0, 2} for k=1;
    # top-2: {0, 1} | {2, 0} -> {0, 1, 2}. 2 ** bank column sums: [6, 3, 5].
    bank = torch.tensor([[2., 1., 0.], [1., 0., 2.]])
    scores = torch.tensor([[2., 0., 1.], [0., 2., 1.]])
    out = querybank_norm(scores, bank, beta=LN2, k=1)
    # Row 0: top-1 column 0 is active -> [4, 1, 2] / [6, 3, 5].
    assert torch.allclose(out[0].exp(), torch.tensor([2 / 3, 1 / 3, 2 / 5]))
    # Row 1: top-1 column 1 is not active -> kept unchanged.
    assert torch.equal(out[1], scores[1])
    out = querybank_norm(scores, bank, beta=LN2, k=2)
    assert torch.allclose(out[1].exp(), torch.tensor([1 / 6, 4 / 3, 2 / 5]))


def test_querybank_norm_with_itself_as_bank_normalises_every_row():
    # 2 ** HUB: [[16,1,1],[8,4,1],[8,1,4]], column sums [32, 6, 6].
    expected = torch.tensor([[1 / 2, 1 / 6, 1 / 6],
                             [1 / 4, 2 / 3, 1 / 6],
                             [1 / 4, 1 / 6, 2 / 3]])
    out = querybank_norm(HUB, HUB, beta=LN2, k=1)
    assert torch.allclose(out.exp(), expected)


def test_querybank_norm_does_not_overflow_on_logit_scale_scores():
    scores = torch.tensor([[100., 90.], [95., 99.]])
    out = querybank_norm(scores, scores, beta=20.0)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, querybank_norm(scores.double(), scores.double(),
                                              beta=20.0).float())


def test_querybank_norm_rejects_bad_k_and_mismatched_bank():
    with pytest.raises(ValueError, match='k must be'):
        querybank_norm(HUB, HUB, beta=1.0, k=4)
    with pytest.raises(ValueError, match='gallery columns'):
        querybank_norm(HUB, HUB[:, :2], beta=1.0)


def test_qb_metrics_hand_computed_and_plain_metrics_unchanged():
    plain = run_metric(HUB)
    both = run_metric(HUB, qb_beta=LN2, qb_k=1)
    assert {key: both[key] for key in plain} == plain
    assert set(both) == set(plain) | {f'qb/{key}' for key in plain}
    # Plain t2v ranks [1, 2, 2]; QB t2v ranks [1, 1, 1] (see expected above).
    assert plain['t2v/R1'] == pytest.approx(100 / 3)
    assert plain['t2v/MnR'] == pytest.approx(5 / 3)
    assert both['qb/t2v/R1'] == 100.0 and both['qb/t2v/MnR'] == 1.0
    # v2t: bank = HUB.T, 2 ** column sums [18, 13, 13]; video rows become
    # [16/18, 8/13, 8/13], [1/18, 4/13, 1/13], [1/18, 1/13, 4/13]: ranks 1.
    assert both['qb/v2t/R1'] == 100.0 and both['qb/v2t/MdR'] == 1.0


def test_dsl_hand_computed_values_and_metrics():
    # tau = ln 2: softmax over texts (dim 0) of 2 ** HUB columns, sums
    # [32, 6, 6]; DSL t2v = HUB * weights.
    t2v = dual_softmax(HUB, LN2, dim=0)
    expected = torch.tensor([[4 * 16 / 32, 0., 0.],
                             [3 * 8 / 32, 2 * 4 / 6, 0.],
                             [3 * 8 / 32, 0., 2 * 4 / 6]])
    assert torch.allclose(t2v, expected)  # rows 1, 2: 4/3 > 3/4 -> rank 1
    # v2t normalises over videos (dim 1), row sums [18, 13, 13].
    v2t = dual_softmax(HUB, LN2, dim=1)
    assert torch.allclose(v2t[1], torch.tensor([3 * 8 / 13, 2 * 4 / 13, 0.]))
    metrics = run_metric(HUB, dsl_tau=LN2)
    assert metrics['dsl/t2v/R1'] == 100.0 and metrics['t2v/R1'] < 100.0
    # v2t, video 0 over texts: [64/18, 24/13, 24/13] -> rank 1; video 1:
    # [0, 8/13, 0] -> rank 1; video 2 likewise.
    assert metrics['dsl/v2t/R1'] == 100.0


def test_qb_ranks_are_dumped(tmp_path):
    path = tmp_path / 'r.pkl'
    run_metric(HUB, qb_beta=LN2, dump_file=str(path))
    with open(path, 'rb') as f:
        dump = pickle.load(f)
    assert dump['qb_t2v_ranks'].tolist() == [1, 1, 1]
    assert dump['t2v_ranks'].tolist() == [1, 2, 2]


def test_qb_metrics_equal_the_exp_formula_on_random_multi_caption_scores():
    beta = 5.0
    gen = torch.Generator().manual_seed(0)
    index = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4])  # uneven captions
    scores = torch.rand(len(index), 5, generator=gen, dtype=torch.float64)
    metric = RetrievalMetric(qb_beta=beta)
    metric.process(None, [dict(
        scores=scores, text_video_index=index,
        video_ids=[f'v{j}' for j in range(5)],
        captions=[f'c{i}' for i in range(len(index))])])
    metrics = metric.evaluate(1)
    # Self bank, k=1: every row is normalised. t2v divides by column sums
    # over captions; v2t (bank = S.T) by each caption's sum over videos.
    weights = (beta * scores).exp()
    t2v = weights / weights.sum(0, keepdim=True)
    v2t = weights / weights.sum(1, keepdim=True)
    expected = {
        **{f'qb/t2v/{k}': v for k, v in
           rank_metrics(t2v_ranks(t2v, index)).items()},
        **{f'qb/v2t/{k}': v for k, v in
           rank_metrics(v2t_ranks(v2t, index)).items()},
    }
    assert {key: metrics[key] for key in expected} == pytest.approx(expected)
