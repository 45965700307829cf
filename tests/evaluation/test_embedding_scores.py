"""Ranks of score matrices computed block by block from embeddings."""
import pytest
import torch
from test_retrieval_metric import brute_t2v, brute_v2t, uneven_shuffled_index

from mmclip4clip.evaluation.functional import (
    retrieval_ranks,
    t2v_ranks,
    v2t_ranks,
)
from mmclip4clip.evaluation.metrics.retrieval_metric import RetrievalMetric
from mmclip4clip.evaluation.scores import EmbeddingScores


def integer_embeddings(num: int, dim: int, seed: int) -> torch.Tensor:
    """Small integers: every dot product is exact in float32, and with only
    three values per entry many scores tie exactly."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, (num, dim), generator=gen).float()


@pytest.mark.parametrize('block_size', [1, 3, 7, None])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_streamed_ranks_with_exact_ties_equal_brute_force(seed, block_size):
    index = uneven_shuffled_index(12, seed)
    text = integer_embeddings(len(index), 6, seed)
    video = integer_embeddings(12, 6, seed + 100)
    video[5] = video[3]  # duplicate videos: ties on whole columns
    scores = EmbeddingScores(text, video, scale=2.0)
    matrix = 2.0 * text @ video.T  # exact
    t2v, v2t = retrieval_ranks(scores, index, block_size)
    assert t2v.tolist() == brute_t2v(matrix, index)
    assert v2t.tolist() == brute_v2t(matrix, index)
    assert t2v_ranks(scores, index, block_size).tolist() == t2v.tolist()
    assert v2t_ranks(scores, index, block_size).tolist() == v2t.tolist()


@pytest.mark.parametrize('block_size', [2, 5, None])
def test_streamed_ranks_equal_the_stored_matrix_path(block_size):
    gen = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(40, 16, generator=gen),
                                         dim=-1)
    video = torch.nn.functional.normalize(torch.randn(40, 16, generator=gen),
                                          dim=-1)
    video[7] = video[2]
    text[9] = video[9]  # a caption equal to its video
    index = torch.arange(40)
    scores = EmbeddingScores(text, video, scale=100.0)
    streamed = retrieval_ranks(scores, index, block_size)
    stored = retrieval_ranks(scores.full(), index, block_size)
    assert torch.equal(streamed[0], stored[0])
    assert torch.equal(streamed[1], stored[1])


def test_non_finite_embedding_is_an_error_naming_it():
    text = torch.randn(4, 8)
    video = torch.randn(5, 8)
    video[3, 1] = float('nan')
    with pytest.raises(ValueError, match='video embedding 3'):
        retrieval_ranks(EmbeddingScores(text, video), torch.arange(4))


def test_tiles_cover_every_column_once(monkeypatch):
    # Small tiles, so phase 2 walks several of them on both sides of the
    # block's own columns.
    import mmclip4clip.evaluation.functional as functional
    monkeypatch.setitem(functional.TILE_SIZES, 'cpu', (1024, 3))
    index = uneven_shuffled_index(17, 5)
    text = integer_embeddings(len(index), 5, 5)
    video = integer_embeddings(17, 5, 6)
    t2v, v2t = retrieval_ranks(EmbeddingScores(text, video), index, 4)
    matrix = text @ video.T
    assert t2v.tolist() == brute_t2v(matrix, index)
    assert v2t.tolist() == brute_v2t(matrix, index)


def test_metric_accepts_embedding_scores_and_dumps_the_matrix(tmp_path):
    gen = torch.Generator().manual_seed(0)
    index = uneven_shuffled_index(10, 0)
    text = torch.randn(len(index), 8, generator=gen)
    video = torch.randn(10, 8, generator=gen)
    scores = EmbeddingScores(text, video, scale=3.0)
    result = dict(scores=scores, text_video_index=index,
                  video_ids=[str(i) for i in range(10)],
                  captions=[str(i) for i in range(len(index))])
    dump = tmp_path / 'r.pkl'
    streamed = RetrievalMetric(dump_file=str(dump), dsl_tau=1.0)
    stored = RetrievalMetric(dsl_tau=1.0)
    streamed.process(None, [result])
    stored.process(None, [dict(result, scores=scores.full())])
    assert streamed.evaluate(1) == stored.evaluate(1)
    import pickle
    with open(dump, 'rb') as f:
        payload = pickle.load(f)
    assert payload['scores'].shape == (len(index), 10)
    # The dumped ranks are those of the dumped matrix.
    dumped = torch.from_numpy(payload['scores'])
    assert payload['t2v_ranks'].tolist() == brute_t2v(dumped, index)
    assert payload['v2t_ranks'].tolist() == brute_v2t(dumped, index)


def test_counts_above_2048_are_exact_in_half_precision():
    # 3000 candidates above the ground truth in one row: float16 cannot
    # hold 3000 exactly, the counts must not be summed in it.
    scores = torch.zeros(2, 3001, dtype=torch.float16)
    scores[0, 1:] = 1.0
    index = torch.tensor([0, 1])
    scores[1, 1] = 2.0
    assert t2v_ranks(scores, index).tolist() == [3001, 1]


def _pair_scorer(text, frames, mask):
    """A stand-in cross-encoder: [B, D], [C, T, D], [C, T] -> [B, C]."""
    pooled = (frames * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return text @ pooled.T


def test_pair_scores_rank_as_their_full_matrix_tile_by_tile(monkeypatch):
    import mmclip4clip.evaluation.functional as functional
    from mmclip4clip.evaluation.scores import PairScores
    monkeypatch.setitem(functional.TILE_SIZES, 'cpu', (1024, 3))
    index = uneven_shuffled_index(11, 3)
    gen = torch.Generator().manual_seed(3)
    text = torch.randint(-2, 3, (len(index), 4), generator=gen).float()
    frames = torch.randint(-2, 3, (11, 3, 4), generator=gen).float()
    mask = torch.ones(11, 3)
    mask[::2, 2] = 0
    calls = []

    def scorer(*args):
        calls.append(args[0].shape[0] * args[1].shape[0])
        return _pair_scorer(*args)

    scores = PairScores(scorer, text, frames, mask)
    matrix = _pair_scorer(text, frames, mask)
    t2v, v2t = retrieval_ranks(scores, index, 4)
    assert sum(calls) == len(index) * 11  # every pair scored exactly once
    assert t2v.tolist() == brute_t2v(matrix, index)
    assert v2t.tolist() == brute_v2t(matrix, index)
    torch.testing.assert_close(scores.full(), matrix)


def test_a_non_finite_pair_logit_is_an_error_naming_the_pair():
    from mmclip4clip.evaluation.scores import PairScores

    text, frames = torch.randn(3, 4), torch.randn(5, 2, 4)
    frames[4, 1, 0] = float('inf')
    frames[4, 0, 0] = float('-inf')  # video 4's pair logits are NaN
    scores = PairScores(_pair_scorer, text, frames, torch.ones(5, 2))
    with pytest.raises(ValueError, match='video features 4'):
        scores.check_finite()
    with pytest.raises(ValueError, match='caption 0 and video 4'):
        scores.row_tiles(torch.arange(3))(0, 5)


def test_pair_scores_compute_under_the_grad_mode_they_were_made_in():
    from mmclip4clip.evaluation.scores import PairScores
    weight = torch.ones(4, requires_grad=True)

    def scorer(text, frames, mask):
        return _pair_scorer(text * weight, frames, mask)

    text, frames, mask = torch.randn(2, 4), torch.randn(3, 2, 4), torch.ones(3, 2)
    with torch.no_grad():
        lazy = PairScores(scorer, text, frames, mask)
    assert not lazy.full().requires_grad  # computed here, with grad on
    assert PairScores(scorer, text, frames, mask).full().requires_grad


def test_a_user_tensor_is_wrapped_once_and_checked():
    from mmclip4clip.evaluation.scores import DenseScores, as_scores
    matrix = torch.randn(3, 4)
    wrapped = as_scores(matrix)
    assert isinstance(wrapped, DenseScores) and as_scores(wrapped) is wrapped
    assert torch.equal(wrapped.rows(torch.tensor([2, 0])), matrix[[2, 0]])
    with pytest.raises(ValueError, match='2-d'):
        as_scores(torch.randn(3))
    with pytest.raises(ValueError, match='float'):
        as_scores(torch.ones(3, 4, dtype=torch.long))
    matrix[1, 2] = float('nan')
    with pytest.raises(ValueError, match='row 1 .* column 2'):
        as_scores(matrix).check_finite()
