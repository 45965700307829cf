"""The video index and query encoding from Python (mmclip4clip.apis), with a
tiny randomly initialised model, a few rendered clips and a word-level
tokenizer: every malformed index, non-finite embedding or unusable query is
an error naming what is at fault."""
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmclip4clip.apis import (
    encode_query,
    encode_texts,
    encode_videos,
    init_retriever,
    load_index,
    rerank_with_tight,
    search_embedding,
    search_index,
    update_index,
)
from mmclip4clip.apis.encode import QueryWarning
from mmclip4clip.apis.index import save_index
from mmclip4clip.datasets.synthetic import (
    build_tokenizer,
    render_clip_and_place,
    write_mp4,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ('configs/retrieval/clip4clip/'
                 'clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb.py')
CLIPS = {'red_square_left.mp4': ('red', 'square', 'left'),
         'blue_circle_still.mp4': ('blue', 'circle', 'still'),
         'sub/green_triangle_up.mp4': ('green', 'triangle', 'up')}
CAPTIONS = ['a red square moves left', 'a blue circle stays still',
            'the green triangle is moving up']


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """``(model, cfg, video_dir, index_dir)``: a random model and an index
    of three clips built with it."""
    root = tmp_path_factory.mktemp('video_index')
    build_tokenizer(CAPTIONS, root / 'tokenizer')
    rng = np.random.default_rng(0)
    for name, (colour, shape, motion) in CLIPS.items():
        path = root / 'videos' / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frames, _ = render_clip_and_place(colour, shape, motion, rng,
                                          size=32, num_frames=20)
        write_mp4(frames, path, fps=10)
    cfg = Config.fromfile(str(CONFIG))
    for step in cfg.test_dataloader.dataset.pipeline:
        if step['type'] == 'TokenizeCaptions':
            step['tokenizer'] = str(root / 'tokenizer')
    torch.manual_seed(0)
    model = init_retriever(cfg)
    old_umask = os.umask(0o022)
    try:
        update_index(model, cfg, root / 'videos', root / 'index', CONFIG,
                     None)
    finally:
        os.umask(old_umask)
    return model, cfg, root / 'videos', root / 'index'


@pytest.fixture
def nan_model(setup):
    _, cfg, _, _ = setup
    model = init_retriever(cfg)
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(float('nan'))
    return model


def test_index_files_get_the_umask_mode(setup):
    """Written under umask 022, index.json and the embeddings are 0644 like
    any file the user creates (not mkstemp's 0600)."""
    index_dir = setup[3]
    meta = json.loads((index_dir / 'index.json').read_text())
    for path in (index_dir / 'index.json', index_dir / meta['embeddings']):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_a_valid_index_loads_and_searches(setup):
    model, cfg, _, index_dir = setup
    index = load_index(index_dir)
    assert sorted(v['path'] for v in index.videos) == sorted(CLIPS)
    hits = search_index(model, cfg, index, 'a red square', topk=2)
    assert len(hits) == 2 and all(math.isfinite(h['score']) for h in hits)


# --------------------------------------------------------------------------
# Non-finite embeddings
# --------------------------------------------------------------------------


def test_nan_weights_are_refused_before_anything_is_stored(setup, nan_model,
                                                           tmp_path):
    _, cfg, video_dir, _ = setup
    with pytest.raises(ValueError, match='not finite') as err:
        update_index(nan_model, cfg, video_dir, tmp_path / 'index', CONFIG,
                     None)
    assert 'red_square_left.mp4' in str(err.value)
    assert not (tmp_path / 'index' / 'index.json').exists()
    assert list((tmp_path / 'index').glob('*.npy')) == []


def test_nan_text_embedding_names_the_query(setup, nan_model):
    _, cfg, _, _ = setup
    with pytest.raises(ValueError, match="not finite.*'a red square'"):
        encode_texts(nan_model, cfg, ['a red square'])


def test_save_index_refuses_non_finite_rows(setup, tmp_path):
    index = load_index(setup[3])
    emb = index.embeddings.copy()
    emb[1, 0] = np.inf
    with pytest.raises(ValueError, match=index.videos[1]['path']):
        save_index(tmp_path / 'index', emb, index.meta)
    assert not (tmp_path / 'index' / 'index.json').exists()


# --------------------------------------------------------------------------
# Queries and top-k
# --------------------------------------------------------------------------


@pytest.mark.parametrize('query', ['', '   \t\n'])
def test_empty_or_blank_query_is_an_error(setup, query):
    model, cfg, _, _ = setup
    with pytest.raises(ValueError, match='empty'):
        encode_query(model, cfg, query)


@pytest.mark.parametrize('query', ['zebra giraffe', '[UNK] ?!'])
def test_query_of_only_unknown_words_is_an_error(setup, query):
    model, cfg, _, _ = setup
    with pytest.raises(ValueError, match='knows none of the words'):
        encode_query(model, cfg, query)


def test_unknown_words_are_named_in_a_warning(setup):
    model, cfg, _, _ = setup
    with pytest.warns(QueryWarning, match="'zebra'") as caught:
        emb = encode_query(model, cfg, 'a red zebra moves left')
    assert "'red'" not in str(caught[0].message)
    assert emb.shape == (64,) and np.isfinite(emb).all()


def test_known_query_gives_no_warning(setup, recwarn):
    model, cfg, _, _ = setup
    encode_query(model, cfg, 'a red square moves left')
    assert not [w for w in recwarn if issubclass(w.category, QueryWarning)]


def test_words_past_max_words_are_named_in_a_warning(setup):
    model, cfg, _, _ = setup
    long_query = ' '.join(['red'] * 14 + ['square', 'left'])  # max_words 16
    with pytest.warns(QueryWarning, match="ignored: 'square left'"):
        encode_query(model, cfg, long_query)


def test_search_embedding_is_the_ranking_half_of_search_index(setup):
    """search_index = encode_query then search_embedding; exact search is
    the brute-force inner-product order, and faiss with a held graph gives
    the same rows and scores on this tiny index."""
    from mmclip4clip.apis.index import faiss_graph

    model, cfg, _, index_dir = setup
    index = load_index(index_dir)
    text = encode_query(model, cfg, 'a red square')
    exact = search_embedding(index, text, 3)
    assert exact == search_index(model, cfg, index, 'a red square', 3)
    scores = index.embeddings @ text
    assert [h['path'] for h in exact] == [
        index.videos[i]['path'] for i in np.argsort(-scores)]
    assert [h['score'] for h in exact] == sorted(scores.tolist(),
                                                 reverse=True)
    approx = search_embedding(index, text, 3, 'faiss',
                              graph=faiss_graph(index))
    assert [h['path'] for h in approx] == [h['path'] for h in exact]
    assert np.allclose([h['score'] for h in approx],
                       [h['score'] for h in exact], atol=1e-5)
    with pytest.raises(ValueError, match='topk'):
        search_embedding(index, text, 0)


@pytest.mark.parametrize('topk', [0, -5])
def test_topk_must_be_positive(setup, topk):
    model, cfg, _, index_dir = setup
    with pytest.raises(ValueError, match='topk'):
        search_index(model, cfg, load_index(index_dir), 'a red square',
                     topk)


def test_missing_video_dir_is_an_error(setup, tmp_path):
    model, cfg, _, _ = setup
    with pytest.raises(FileNotFoundError, match='no_such_dir'):
        update_index(model, cfg, tmp_path / 'no_such_dir', tmp_path / 'index',
                     CONFIG, None)


# --------------------------------------------------------------------------
# Malformed indexes
# --------------------------------------------------------------------------


def _edit_meta(edit):
    def apply(index_dir: Path) -> None:
        path = index_dir / 'index.json'
        meta = json.loads(path.read_text())
        edit(meta)
        path.write_text(json.dumps(meta))
    return apply


def _write_text(text):
    def apply(index_dir: Path) -> None:
        (index_dir / 'index.json').write_text(text)
    return apply


def _write_bytes(data):
    def apply(index_dir: Path) -> None:
        (index_dir / 'index.json').write_bytes(data)
    return apply


def _edit_embeddings(edit):
    def apply(index_dir: Path) -> None:
        name = json.loads((index_dir / 'index.json').read_text())['embeddings']
        path = index_dir / name
        result = edit(np.load(path), path)
        if result is not None:
            np.save(path, result, allow_pickle=True)
    return apply


def _set(key, value):
    return _edit_meta(lambda meta: meta.__setitem__(key, value))


def _set_video(row, key, value):
    return _edit_meta(lambda meta: meta['videos'][row].__setitem__(key, value))


MALFORMED = {
    'not_json': (_write_text('{"format": '), 'index.json: not valid JSON'),
    'nan_constant': (_write_text('{"dim": NaN}'), 'not valid JSON'),
    'not_utf8': (_write_bytes(b'{"format": "\xff"}'), 'UTF-8'),
    'not_an_object': (_write_text('[1, 2]'), 'not a JSON object'),
    'wrong_format': (_set('format', 'something-else'), 'format'),
    'bool_version': (_set('version', True), 'version'),
    'missing_videos': (_edit_meta(lambda m: m.pop('videos')),
                       'missing key.*videos'),
    'missing_skipped': (_edit_meta(lambda m: m.pop('skipped')),
                        'missing key.*skipped'),
    'dim_is_a_string': (_set('dim', '64'), 'dim.*int'),
    'videos_not_a_list': (_set('videos', {'a': 1}), 'videos.*list'),
    'video_not_an_object': (_set('videos', ['x.mp4', 'y.mp4', 'z.mp4']),
                            r'videos\[0\].*object'),
    'video_without_path': (_edit_meta(lambda m: m['videos'][1].pop('path')),
                           r'videos\[1\].*missing key.*path'),
    'size_is_a_float': (_set_video(2, 'size', 1.5), r'videos\[2\].*size'),
    'duplicate_path': (_edit_meta(lambda m: m['videos'][1].__setitem__(
        'path', m['videos'][0]['path'])), 'more than once'),
    'absolute_path': (_set_video(0, 'path', '/etc/passwd'), 'relative'),
    'escaping_path': (_set_video(0, 'path', '../outside.mp4'), 'relative'),
    'embeddings_name_escapes': (_set('embeddings', '../embeddings-0.npy'),
                                'embeddings'),
    'dim_mismatch': (_set('dim', 32), 'dim'),
    'embeddings_missing': (_edit_embeddings(lambda e, p: p.unlink()),
                           'embeddings-.*missing'),
    'embeddings_not_npy': (_edit_embeddings(
        lambda e, p: p.write_bytes(b'not an array')), 'embeddings-.*.npy'),
    'embeddings_float64': (_edit_embeddings(lambda e, p: e.astype(np.float64)),
                           'float64'),
    'embeddings_pickled': (_edit_embeddings(
        lambda e, p: np.array([dict(a=1)], dtype=object)), 'embeddings-'),
    'embeddings_wrong_width': (_edit_embeddings(lambda e, p: e[:, :32]),
                               r'\(3, 32\).*dim 64'),
    'embeddings_wrong_rows': (_edit_embeddings(lambda e, p: e[:2]),
                              r'\(2, 64\).*3 videos'),
    'embeddings_nan': (_edit_embeddings(
        lambda e, p: np.where(np.arange(3)[:, None] == 2, np.nan, e)
        .astype(np.float32)), 'not finite'),
    'embeddings_not_unit': (_edit_embeddings(lambda e, p: e * 3),
                            'unit'),
}


@pytest.mark.parametrize('case', MALFORMED)
def test_malformed_index_is_an_error_naming_the_file(setup, tmp_path, case):
    corrupt, reason = MALFORMED[case]
    index_dir = tmp_path / 'index'
    shutil.copytree(setup[3], index_dir)
    corrupt(index_dir)
    with pytest.raises(ValueError) as err:
        load_index(index_dir)
    message = str(err.value)
    assert str(index_dir) in message and '\n' not in message
    if reason is not None:
        assert re.search(reason, message), message


def test_non_finite_rows_are_named(setup, tmp_path):
    index_dir = tmp_path / 'index'
    shutil.copytree(setup[3], index_dir)
    meta = json.loads((index_dir / 'index.json').read_text())
    emb = np.load(index_dir / meta['embeddings'])
    emb[1] = np.nan
    np.save(index_dir / meta['embeddings'], emb)
    with pytest.raises(ValueError, match=meta['videos'][1]['path']):
        load_index(index_dir)


def test_a_corrupt_index_is_not_updated_without_rebuild(setup, tmp_path):
    model, cfg, video_dir, index_dir = setup
    copy = tmp_path / 'index'
    shutil.copytree(index_dir, copy)
    (copy / 'index.json').write_text('{')
    with pytest.raises(ValueError, match='--rebuild'):
        update_index(model, cfg, video_dir, copy, CONFIG, None)
    counts = update_index(model, cfg, video_dir, copy, CONFIG, None,
                          rebuild=True)
    assert counts['added'] == 3 and len(load_index(copy).videos) == 3


def test_encode_videos_names_non_finite_videos(setup, nan_model):
    _, cfg, video_dir, _ = setup
    paths = sorted(video_dir.rglob('*.mp4'))
    with pytest.raises(ValueError, match='3 video') as err:
        encode_videos(nan_model, cfg, paths)
    assert all(str(p) in str(err.value) for p in paths)


@pytest.fixture
def tight(setup):
    """A random tightTransf model with the setup's config."""
    _, cfg, _, _ = setup
    tight_cfg = cfg.copy()
    tight_cfg.model = dict(cfg.model, head=dict(
        type='TightTransfHead', embed_dim=64, num_layers=1, num_heads=2,
        max_positions=32))
    return init_retriever(tight_cfg), tight_cfg


def test_rerank_puts_unreadable_files_last_with_a_null_score(setup, tight,
                                                             tmp_path):
    _, _, video_dir, _ = setup
    tight_model, tight_cfg = tight
    shutil.copytree(video_dir, tmp_path / 'videos')
    (tmp_path / 'videos' / 'broken.mp4').write_bytes(b'not a video')
    hits = [dict(path='broken.mp4', score=0.9),
            dict(path='red_square_left.mp4', score=0.5)]
    ranked = rerank_with_tight(hits, tight_model, tight_cfg,
                               tmp_path / 'videos', 'a red square')
    assert [h['path'] for h in ranked] == ['red_square_left.mp4',
                                           'broken.mp4']
    assert ranked[1]['tight_score'] is None
    assert math.isfinite(ranked[0]['tight_score'])
    json.dumps(ranked, allow_nan=False)  # valid JSON


def test_non_finite_pair_logit_names_the_video(setup, tight):
    _, _, video_dir, _ = setup
    tight_model, tight_cfg = tight
    with torch.no_grad():
        for param in tight_model.head.parameters():
            param.fill_(float('nan'))
    with pytest.raises(ValueError, match='red_square_left.mp4.*not finite'):
        rerank_with_tight([dict(path='red_square_left.mp4', score=0.5)],
                          tight_model, tight_cfg, video_dir, 'a red square')


def test_top_k_stable_is_the_stable_sort_prefix():
    """The exact engine's selection equals the first k of a stable
    descending sort, ties (many, or all scores equal) in index order."""
    from mmclip4clip.apis.index import top_k_stable
    rng = np.random.default_rng(0)
    for n in (1, 5, 50, 1000):
        for trial in range(60):
            scores = (rng.standard_normal(n) if trial % 3 == 0 else
                      rng.integers(0, 4, n)).astype(np.float32)
            if trial % 7 == 0:
                scores[:] = 1.0
            for k in (1, 2, 3, 10, n, n + 5):
                np.testing.assert_array_equal(
                    top_k_stable(scores, k),
                    np.argsort(-scores, kind='stable')[:k])


def test_exact_scores_run_on_one_blas_thread():
    """The exact product runs with numpy's BLAS limited to one thread (its
    spinning threads would slow the next query's encoding), gives the plain
    product, and leaves the thread counts as they were."""
    from threadpoolctl import threadpool_info

    from mmclip4clip.apis.index import blas_pools, exact_scores

    # numpy's own BLAS (scipy-openblas in numpy's wheels) must be limited.
    name = np.show_config(mode='dicts')['Build Dependencies']['blas']['name']
    numpy_prefix = 'lib' + name.replace('-', '_')
    limited = {pool['filepath'] for pool in blas_pools().info()}

    def threads() -> dict[str, int]:
        return {pool['filepath']: pool['num_threads']
                for pool in threadpool_info() if pool['user_api'] == 'blas'}

    def numpy_pools() -> set[str]:
        return {pool['filepath'] for pool in threadpool_info()
                if pool['prefix'] == numpy_prefix}

    seen: list[dict[str, int]] = []

    class Recording(np.ndarray):
        def __matmul__(self, other):
            seen.append(threads())
            return np.asarray(self) @ other

    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((300, 16)).astype(np.float32)
    text = rng.standard_normal(16).astype(np.float32)
    before = threads()
    assert numpy_pools() and numpy_pools() <= limited, (numpy_prefix,
                                                        threadpool_info())
    scores = exact_scores(embeddings.view(Recording), text)
    assert len(seen) == 1
    assert {path: seen[0][path] for path in limited} == dict.fromkeys(
        limited, 1)
    np.testing.assert_array_equal(np.asarray(scores), embeddings @ text)
    assert threads() == before


def test_faiss_ef_search_trades_recall():
    """On random vectors (the hard case for a graph) a search depth as
    large as the index finds the exact top 10 for every query, the graph's
    default is held and a depth of 1 finds fewer; ``ef_search`` is checked
    and refused for the exact engine."""
    from mmclip4clip.apis import VideoIndex
    from mmclip4clip.apis.index import EF_SEARCH, faiss_graph

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VideoIndex(vectors, dict(videos=[dict(path=f'{i}.mp4')
                                             for i in range(len(vectors))]))
    queries = rng.standard_normal((20, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    graph = faiss_graph(index)
    assert graph.hnsw.efSearch == EF_SEARCH

    def recall(**kwargs) -> float:
        found = []
        for text in queries:
            exact = {h['path'] for h in search_embedding(index, text, 10)}
            approx = search_embedding(index, text, 10, 'faiss', graph=graph,
                                      **kwargs)
            found.append(len(exact & {h['path'] for h in approx}) / 10)
        return float(np.mean(found))

    assert recall(ef_search=3000) == 1.0
    assert recall(ef_search=1) < recall() <= 1.0
    assert graph.hnsw.efSearch == EF_SEARCH  # per-query, graph unchanged
    assert faiss_graph(index, ef_search=64).hnsw.efSearch == 64
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match='ef_search must be'):
            search_embedding(index, queries[0], 10, 'faiss', graph=graph,
                             ef_search=bad)
        with pytest.raises(ValueError, match='ef_search must be'):
            faiss_graph(index, ef_search=bad)
    with pytest.raises(ValueError, match='engine faiss only'):
        search_embedding(index, queries[0], 10, ef_search=64)
