"""Tests of the exact retrieval ranks, metrics and RetrievalMetric."""
import math
import os
import pickle
import stat

import numpy as np
import pytest
import torch
from helpers import run_gloo

from mmclip4clip.evaluation.functional import (
    dual_softmax,
    rank_metrics,
    t2v_ranks,
    v2t_ranks,
)
from mmclip4clip.evaluation.metrics.retrieval_metric import RetrievalMetric

KEYS = [
    f'{direction}/{name}'
    for direction in ('t2v', 'v2t')
    for name in ('R1', 'R5', 'R10', 'MdR', 'MnR')
]


# ---------------------------------------------------------------- references
def brute_t2v(scores: torch.Tensor, gt: torch.Tensor) -> list[int]:
    """Slow obvious t2v ranks: 1 + number of strictly better columns."""
    rows, gt = scores.double().tolist(), gt.tolist()
    return [1 + sum(s > row[g] for s in row) for row, g in zip(rows, gt)]


def brute_v2t(scores: torch.Tensor, index: torch.Tensor) -> list[int]:
    """Slow obvious v2t ranks: each video scored by its best caption."""
    rows, index = scores.double().tolist(), index.tolist()
    num_videos = scores.shape[1]
    ranks = []
    for j in range(num_videos):
        video_scores = [
            max(rows[c][j] for c in range(len(rows)) if index[c] == k)
            for k in range(num_videos)
        ]
        ranks.append(1 + sum(v > video_scores[j] for v in video_scores))
    return ranks


def tied_scores(num_texts: int, num_videos: int, seed: int) -> torch.Tensor:
    """Scores with many ties: integers 0..3 as floats."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (num_texts, num_videos), generator=gen).float()


def uneven_shuffled_index(num_videos: int, seed: int) -> torch.Tensor:
    """1..4 captions per video, in shuffled caption order."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 5, (num_videos, ), generator=gen)
    index = torch.repeat_interleave(torch.arange(num_videos), counts)
    return index[torch.randperm(len(index), generator=gen)]


def make_result(scores: torch.Tensor, index: torch.Tensor) -> dict:
    num_texts, num_videos = scores.shape
    return {
        'scores': scores,
        'text_video_index': index,
        'video_ids': [f'video{k}' for k in range(num_videos)],
        'captions': [f'caption {c}' for c in range(num_texts)],
    }


def run_metric(result: dict, **kwargs) -> dict[str, float]:
    metric = RetrievalMetric(**kwargs)
    metric.process(data_batch=None, data_samples=[result])
    return metric.evaluate(size=len(result['captions']))


# ------------------------------------------------------------- exact ranks
@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('block_size', [1, 3, 4096])
def test_t2v_ranks_equal_brute_force_with_ties(seed, block_size):
    scores = tied_scores(17, 11, seed)
    gt = torch.randint(0, 11, (17, ), generator=torch.Generator().manual_seed(seed))
    ranks = t2v_ranks(scores, gt, block_size=block_size)
    assert ranks.dtype == torch.long
    assert ranks.tolist() == brute_t2v(scores, gt)


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('block_size', [1, 3, 4096])
def test_one_caption_per_video_ranks_equal_brute_force_both_directions(
        seed, block_size):
    num = 13
    scores = tied_scores(num, num, seed)
    # Captions in shuffled order: caption c belongs to video index[c].
    index = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
    assert t2v_ranks(scores, index, block_size).tolist() == brute_t2v(
        scores, index)
    assert v2t_ranks(scores, index, block_size).tolist() == brute_v2t(
        scores, index)


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('block_size', [1, 3, 4096])
def test_uneven_multi_caption_ranks_equal_brute_force_both_directions(
        seed, block_size):
    index = uneven_shuffled_index(9, seed)
    scores = tied_scores(len(index), 9, seed)
    assert t2v_ranks(scores, index, block_size).tolist() == brute_t2v(
        scores, index)
    assert v2t_ranks(scores, index, block_size).tolist() == brute_v2t(
        scores, index)


@pytest.mark.parametrize('block_size', [1, 3, 7])
def test_blocked_ranks_equal_unblocked_on_continuous_scores(block_size):
    gen = torch.Generator().manual_seed(0)
    index = uneven_shuffled_index(20, seed=1)
    scores = torch.randn(len(index), 20, generator=gen)
    big = len(index) + 20
    assert torch.equal(t2v_ranks(scores, index, block_size),
                       t2v_ranks(scores, index, big))
    assert torch.equal(v2t_ranks(scores, index, block_size),
                       v2t_ranks(scores, index, big))


def test_v2t_with_one_caption_per_video_is_t2v_of_transpose():
    scores = tied_scores(10, 10, seed=5)
    identity = torch.arange(10)
    assert torch.equal(v2t_ranks(scores, identity),
                       t2v_ranks(scores.T.contiguous(), identity))


@pytest.mark.parametrize('dtype', [torch.float16, torch.float32, torch.float64])
def test_ranks_are_exact_for_half_single_and_double_scores(dtype):
    index = uneven_shuffled_index(8, seed=2)
    scores = tied_scores(len(index), 8, seed=3)
    cast = scores.to(dtype)
    assert t2v_ranks(cast, index, 3).tolist() == brute_t2v(scores, index)
    assert v2t_ranks(cast, index, 3).tolist() == brute_v2t(scores, index)


# ---------------------------------------------------------- hand examples
def test_hand_made_3x3_metrics_both_directions():
    scores = torch.tensor([[0.9, 0.1, 0.5],
                           [0.8, 0.3, 0.2],
                           [0.1, 0.7, 0.6]])
    index = torch.arange(3)
    # t2v: row 0 best; row 1 beaten by 0.8; row 2 beaten by 0.7.
    assert t2v_ranks(scores, index).tolist() == [1, 2, 2]
    # v2t (columns): video 0 best; video 1 beaten by 0.7; video 2 best.
    assert v2t_ranks(scores, index).tolist() == [1, 2, 1]
    metrics = run_metric(make_result(scores, index), prefix='test')
    assert metrics['test/t2v/R1'] == pytest.approx(100 / 3)
    assert metrics['test/t2v/R5'] == 100.0
    assert metrics['test/t2v/MdR'] == 2.0
    assert metrics['test/t2v/MnR'] == pytest.approx(5 / 3)
    assert metrics['test/v2t/R1'] == pytest.approx(200 / 3)
    assert metrics['test/v2t/MdR'] == 1.0
    assert metrics['test/v2t/MnR'] == pytest.approx(4 / 3)


def test_hand_made_multi_caption_metrics_both_directions():
    # Captions 0, 1 -> video 0; caption 2 -> video 1; captions 3, 4 -> video 2.
    index = torch.tensor([0, 0, 1, 2, 2])
    scores = torch.tensor([[0.2, 0.5, 0.1],
                           [0.9, 0.3, 0.4],
                           [0.6, 0.4, 0.3],
                           [0.1, 0.8, 0.2],
                           [0.3, 0.2, 0.7]])
    # t2v: captions 0, 2, 3 are beaten once; captions 1, 4 are best.
    assert t2v_ranks(scores, index).tolist() == [2, 1, 2, 2, 1]
    # v2t, best caption per video:
    #   video 0: [0.9, 0.6, 0.3] -> 1; video 1: [0.5, 0.4, 0.8] -> 3;
    #   video 2: [0.4, 0.3, 0.7] -> 1.
    assert v2t_ranks(scores, index).tolist() == [1, 3, 1]
    metrics = run_metric(make_result(scores, index), prefix='test')
    assert metrics['test/t2v/R1'] == pytest.approx(40.0)
    assert metrics['test/t2v/MdR'] == 2.0
    assert metrics['test/t2v/MnR'] == pytest.approx(1.6)
    # Denominator is the 3 videos, not the 5 captions.
    assert metrics['test/v2t/R1'] == pytest.approx(200 / 3)
    assert metrics['test/v2t/R5'] == 100.0
    assert metrics['test/v2t/MdR'] == 1.0
    assert metrics['test/v2t/MnR'] == pytest.approx(5 / 3)


def test_tie_with_ground_truth_is_rank_one_and_r1_denominator_stays_n():
    scores = torch.tensor([[1.0, 1.0, 0.0],
                           [0.0, 1.0, 1.0],
                           [1.0, 1.0, 1.0]])
    index = torch.arange(3)
    assert t2v_ranks(scores, index).tolist() == [1, 1, 1]
    assert v2t_ranks(scores, index).tolist() == [1, 1, 1]
    metrics = run_metric(make_result(scores, index))
    assert metrics['t2v/R1'] == 100.0
    assert metrics['v2t/R1'] == 100.0
    assert metrics['t2v/MnR'] == 1.0


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize('bad', [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize('block_size', [1, 4, 4096])
def test_nan_or_inf_raises_value_error_naming_the_query(bad, block_size):
    scores = torch.rand(10, 10)
    scores[7, 2] = bad
    index = torch.arange(10)
    with pytest.raises(ValueError, match=r'row 7 \(query 7\)'):
        t2v_ranks(scores, index, block_size)
    with pytest.raises(ValueError, match=r'column 2 \(video query 2\)'):
        v2t_ranks(scores, index, block_size)
    with pytest.raises(ValueError, match='query 7'):
        run_metric(make_result(scores, index), block_size=block_size)


def test_video_without_caption_raises_value_error_naming_the_video():
    scores = torch.rand(3, 4)
    index = torch.tensor([0, 1, 3])
    with pytest.raises(ValueError, match='video 2 has no caption'):
        v2t_ranks(scores, index)


@pytest.mark.parametrize(('key', 'change', 'pattern'), [
    ('text_video_index', torch.arange(4), r"'text_video_index' must have shape"),
    ('text_video_index', torch.tensor([0, 1, 5]),
     r"'text_video_index' values must lie in \[0, 3\)"),
    ('text_video_index', torch.tensor([0, -1, 2]),
     r"'text_video_index' values must lie"),
    ('text_video_index', torch.tensor([0.0, 1.0, 2.0]),
     r"'text_video_index' must be an integer"),
    ('scores', torch.rand(3), r"'scores' must be a 2-d float"),
    ('scores', torch.ones(3, 3, dtype=torch.long), r"'scores' must be a 2-d float"),
    ('video_ids', ['a', 'b'], r"'video_ids' has 2 entries"),
    ('captions', ['a'], r"'captions' has 1 entries"),
])
def test_malformed_result_raises_value_error_naming_the_key(key, change, pattern):
    result = make_result(torch.rand(3, 3), torch.arange(3))
    result[key] = change
    metric = RetrievalMetric()
    with pytest.raises(ValueError, match=pattern):
        metric.process(data_batch=None, data_samples=[result])


def test_missing_key_raises_value_error_naming_it():
    result = make_result(torch.rand(3, 3), torch.arange(3))
    del result['captions']
    with pytest.raises(ValueError, match='captions'):
        RetrievalMetric().process(data_batch=None, data_samples=[result])


def test_evaluate_without_process_raises_clear_error():
    with pytest.raises(ValueError, match='got no result'):
        RetrievalMetric().evaluate(size=0)


def test_evaluate_clears_results_so_the_next_evaluation_starts_empty():
    metric = RetrievalMetric()
    metric.process(None, [make_result(torch.rand(4, 4), torch.arange(4))])
    metric.evaluate(size=4)
    assert metric.results == []


# ------------------------------------------------------------------ metrics
@pytest.mark.parametrize(('ranks', 'median'), [
    ([3, 1, 2], 2.0),
    ([4, 1, 2, 9], 3.0),
    ([1, 2], 1.5),
    ([5], 5.0),
])
def test_rank_metrics_median_is_numpy_median_for_odd_and_even_counts(ranks, median):
    metrics = rank_metrics(torch.tensor(ranks))
    assert metrics['MdR'] == median
    assert metrics['MnR'] == pytest.approx(np.mean(ranks))
    assert all(type(value) is float for value in metrics.values())


def test_rank_metrics_recall_counts_rank_at_most_k():
    ranks = torch.tensor([1, 5, 6, 10, 11, 1, 2, 100])
    metrics = rank_metrics(ranks)
    assert metrics['R1'] == pytest.approx(100 * 2 / 8)
    assert metrics['R5'] == pytest.approx(100 * 4 / 8)
    assert metrics['R10'] == pytest.approx(100 * 6 / 8)


def test_rank_metrics_rejects_empty_ranks():
    with pytest.raises(ValueError, match='no ranks'):
        rank_metrics(torch.tensor([], dtype=torch.long))


# ---------------------------------------------------------------------- DSL
def test_dsl_metrics_are_added_under_dsl_prefix_and_plain_ones_unchanged():
    tau = 10.0
    index = uneven_shuffled_index(12, seed=4)
    scores = torch.randn(len(index), 12, generator=torch.Generator().manual_seed(4))
    plain = run_metric(make_result(scores, index), prefix='p')
    with_dsl = run_metric(make_result(scores, index), prefix='p', dsl_tau=tau)

    assert set(with_dsl) == {f'p/{k}' for k in KEYS} | {f'p/dsl/{k}' for k in KEYS}
    assert {k: with_dsl[k] for k in plain} == plain

    t2v_dsl = scores * torch.softmax(scores * tau, dim=0)  # over texts
    v2t_dsl = scores * torch.softmax(scores * tau, dim=1)  # over videos
    expected = {
        **{f't2v/{k}': v for k, v in
           rank_metrics(torch.tensor(brute_t2v(t2v_dsl, index))).items()},
        **{f'v2t/{k}': v for k, v in
           rank_metrics(torch.tensor(brute_v2t(v2t_dsl, index))).items()},
    }
    for key, value in expected.items():
        assert with_dsl[f'p/dsl/{key}'] == pytest.approx(value), key


def test_dual_softmax_normalises_over_the_given_axis():
    scores = torch.randn(5, 4)
    out = dual_softmax(scores, tau=3.0, dim=0)
    assert torch.allclose(out / scores, torch.softmax(3.0 * scores, dim=0))
    assert torch.allclose((out / scores).sum(0), torch.ones(4))


# --------------------------------------------------------- metric pipeline
def test_metric_returns_the_ten_unprefixed_keys_by_default():
    index = uneven_shuffled_index(6, seed=0)
    metrics = run_metric(make_result(tied_scores(len(index), 6, 0), index))
    assert sorted(metrics) == sorted(KEYS)
    assert all(type(value) is float for value in metrics.values())


def test_metric_equals_brute_force_ranks_through_process_and_evaluate():
    index = uneven_shuffled_index(10, seed=7)
    scores = tied_scores(len(index), 10, seed=7)
    metrics = run_metric(make_result(scores, index), block_size=3, prefix='x')
    for direction, ranks in (('t2v', brute_t2v(scores, index)),
                             ('v2t', brute_v2t(scores, index))):
        for key, value in rank_metrics(torch.tensor(ranks)).items():
            assert metrics[f'x/{direction}/{key}'] == pytest.approx(value)


def test_dump_file_writes_pickle_with_documented_keys_and_shapes(tmp_path):
    index = uneven_shuffled_index(5, seed=1)
    scores = torch.randn(len(index), 5, dtype=torch.float64)
    result = make_result(scores, index)
    # Ids that are not paths, as the prepared benchmarks write them.
    result['video_paths'] = [f'data/videos/{video}.mp4'
                             for video in result['video_ids']]
    path = tmp_path / 'new' / 'dir' / 'scores.pkl'
    metrics = run_metric(result, dsl_tau=50.0, dump_file=str(path), prefix='d')

    with open(path, 'rb') as f:
        dump = pickle.load(f)
    num_texts, num_videos = scores.shape
    assert set(dump) == {
        'scores', 'video_ids', 'video_paths', 'captions', 'text_video_index',
        't2v_ranks', 'v2t_ranks', 'metrics', 'dsl_t2v_ranks', 'dsl_v2t_ranks'
    }
    assert dump['video_paths'] == result['video_paths']
    assert dump['scores'].dtype == np.float32
    assert dump['scores'].shape == (num_texts, num_videos)
    np.testing.assert_allclose(dump['scores'], scores.numpy(), rtol=1e-6)
    assert dump['video_ids'] == result['video_ids']
    assert dump['captions'] == result['captions']
    assert dump['text_video_index'].dtype == np.int64
    np.testing.assert_array_equal(dump['text_video_index'], index.numpy())
    for key, length in (('t2v_ranks', num_texts), ('v2t_ranks', num_videos),
                        ('dsl_t2v_ranks', num_texts),
                        ('dsl_v2t_ranks', num_videos)):
        assert dump[key].dtype == np.int64 and dump[key].shape == (length, ), key
    assert dump['t2v_ranks'].tolist() == brute_t2v(scores, index)
    assert dump['v2t_ranks'].tolist() == brute_v2t(scores, index)
    assert {f'd/{k}': v for k, v in dump['metrics'].items()} == metrics
    assert [p.name for p in path.parent.iterdir()] == ['scores.pkl']


def test_dump_file_is_readable_as_the_umask_allows(tmp_path):
    """A dump is shared like any output file (mkstemp made it 0600)."""
    path = tmp_path / 'scores.pkl'
    old = os.umask(0o022)
    try:
        run_metric(make_result(torch.rand(3, 3), torch.arange(3)),
                   dump_file=str(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_video_paths_must_match_the_video_columns():
    result = dict(make_result(torch.rand(3, 3), torch.arange(3)),
                  video_paths=['a.mp4', 'b.mp4'])
    with pytest.raises(ValueError, match="'video_paths' has 2 entries"):
        run_metric(result)


def test_dump_without_dsl_has_no_dsl_ranks(tmp_path):
    path = tmp_path / 'scores.pkl'
    run_metric(make_result(torch.rand(3, 3), torch.arange(3)), dump_file=str(path))
    with open(path, 'rb') as f:
        assert 'dsl_t2v_ranks' not in pickle.load(f)


# ------------------------------------------------------------ distributed
NUM_SAMPLES = 9


def per_video_sample(i: int, with_idx: bool) -> dict:
    """Data sample i (as Evaluator passes it: a dict): 1..3 captions."""
    gen = torch.Generator().manual_seed(i)
    video = torch.randn(6, generator=gen)
    sample = dict(video_emb=video,
                  text_emb=video + torch.randn(1 + i % 3, 6, generator=gen))
    if with_idx:
        sample['sample_idx'] = i
    return sample


def padded_shard(size: int, rank: int, world: int) -> list[int]:
    """DefaultSampler(shuffle=False)'s indices of one rank."""
    total = -(-size // world) * world
    indices = (list(range(size)) * 2)[:total]
    return indices[rank:total:world]


def _distributed_worker(rank: int, world_size: int, out_dir: str) -> None:
    """One of :func:`helpers.run_gloo`'s 2 processes: the metrics each
    sharding gives, pickled to ``out_dir/rank{rank}.pkl``."""
    index = uneven_shuffled_index(8, seed=3)
    result = make_result(tied_scores(len(index), 8, seed=3), index)
    outputs = {}
    # Same full result on every rank.
    metric = RetrievalMetric(prefix='x')
    metric.process(None, [result])
    outputs['every_rank'] = metric.evaluate(size=len(index))
    # Result only on rank 0.
    metric = RetrievalMetric(prefix='x')
    if rank == 0:
        metric.process(None, [result])
    outputs['rank0_only'] = metric.evaluate(size=len(index))
    # No result on rank 0: every rank raises instead of hanging.
    metric = RetrievalMetric(prefix='x')
    if rank == 1:
        metric.process(None, [result])
    try:
        metric.evaluate(size=len(index))
        outputs['error'] = None
    except (ValueError, RuntimeError) as err:
        outputs['error'] = str(err)
    # Data samples, sharded as DefaultSampler does (rank::2, the last
    # shard padded with sample 0), with and without sample_idx.
    for name, with_idx in (('samples', True), ('samples_no_idx', False)):
        metric = RetrievalMetric(prefix='x')
        metric.process(None, [
            per_video_sample(i, with_idx)
            for i in padded_shard(NUM_SAMPLES, rank, world_size)])
        outputs[name] = metric.evaluate(size=NUM_SAMPLES)
    # A full result on one rank, data samples on the other.
    metric = RetrievalMetric()
    metric.process(None, [result] if rank == 0 else
                   [per_video_sample(rank, True)])
    try:
        metric.evaluate(size=len(index))
        outputs['mixed'] = None
    except ValueError as err:
        outputs['mixed'] = str(err)
    with open(f'{out_dir}/rank{rank}.pkl', 'wb') as f:
        pickle.dump(outputs, f)


def test_two_processes_return_the_single_process_metrics_on_every_rank(tmp_path):
    run_gloo(_distributed_worker, str(tmp_path), world_size=2)
    index = uneven_shuffled_index(8, seed=3)
    expected = run_metric(make_result(tied_scores(len(index), 8, seed=3), index),
                          prefix='x')
    single = RetrievalMetric(prefix='x')
    single.process(None, [per_video_sample(i, True)
                          for i in range(NUM_SAMPLES)])
    expected_samples = single.evaluate(size=NUM_SAMPLES)
    assert padded_shard(NUM_SAMPLES, 1, 2)[-1] == 0  # padded
    for rank in range(2):
        with open(tmp_path / f'rank{rank}.pkl', 'rb') as f:
            outputs = pickle.load(f)
        assert outputs['every_rank'] == expected
        assert outputs['rank0_only'] == expected
        assert 'got no result' in outputs['error']
        assert outputs['samples'] == expected_samples
        assert outputs['samples_no_idx'] == expected_samples
        assert 'others data samples' in outputs['mixed']
