"""The ``search`` section: what one text query costs against an index of N
videos, with the library's own search code (``mmclip4clip.apis``).

The index holds N random unit vectors of the joint embedding width (512 for
ViT-B/32) in a :class:`VideoIndex` built in memory, as ``load_index``
returns it. Per size, for each engine (``exact``: a matrix-vector product
on one BLAS thread and a partial sort; ``faiss``: :func:`faiss_graph`'s
HNSW graph, 32 neighbours, efSearch 128):

- ``latency``: the time of one :func:`search_embedding` call (an encoded
  query, top 10; faiss with its graph held in memory), median and p99 over
  random queries, after a few warm-up queries;
- ``search_index``: the whole call a user makes, text to top 10 (encode the
  query, then rank; faiss with the graph cached in the index folder, which
  ``search_index`` reads back on every call: ``graph_read_ms``);
- for exact: the largest difference from a brute-force ranking (one matrix
  product and ``topk`` over all queries at once), score by score;
- for faiss: graph build time, resident memory it adds (peak and held),
  the cache file's size, recall@10 against exact on the same queries, and
  how often a stored vector finds itself first;
- ``ef``: faiss recall@10 and latency at several search depths
  (``ef_search``), on these random vectors and on ``clustered`` ones of
  the same size (their own graph, built and timed).

Random unit vectors in 512 dimensions have no structure: every one is
nearly as close to a query as every other, the hardest case for a graph
search. Real embeddings are clustered; the ``clustered`` vectors imitate
that, with no claim to be CLIP's: one video per N/100 topics, a video
the sum of a direction shared by all videos, its topic's direction and
noise (weights 1, 1, 0.8, then normalised), a query the same with a
direction shared by all texts in place of the video one (the gap between
the two modalities). A query's top 10 are then mostly videos of its topic
(top-1 cosine about 0.43, against 0.19 for random vectors). The
query encoder is the run's CLIP text tower (random weights) with a small
word-level tokenizer; ``encode_query`` loads the tokenizer on every call,
and CLIP's own BPE tokenizer (49k words and merges) loads slower than this
one.
"""
from __future__ import annotations

import copy
import gc
import shutil
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
from mmengine.config import Config

from mmclip4clip.apis import (
    VideoIndex,
    encode_query,
    init_retriever,
    search_embedding,
    search_index,
)
from mmclip4clip.apis.index import EF_SEARCH, faiss_graph
from mmclip4clip.datasets.synthetic import build_tokenizer
from mmclip4clip.datasets.transforms.text import load_tokenizer

from .measure import peak_memory, resident_mib

TOPK = 10
QUERY = 'a man is cooking pasta in a kitchen'
CAPTIONS = (QUERY, 'a dog catches a frisbee on the beach',
            'people dance at a wedding')
EMBEDDINGS_FILE = 'embeddings-benchmark.npy'  # the name index.json would hold
# Search depths (ef_search) the recall sweep tries, the default among them.
EF_DEPTHS = tuple(sorted({64, EF_SEARCH, 256, 512, 1024}))


def random_unit_rows(num: int, dim: int, seed: int,
                     chunk: int = 1 << 16) -> np.ndarray:
    """float32 [num, dim] random unit vectors, drawn a chunk at a time (no
    float64 or second copy of a 2 GB array)."""
    rng = np.random.default_rng(seed)
    out = np.empty((num, dim), dtype=np.float32)
    for start in range(0, num, chunk):
        block = rng.standard_normal((min(chunk, num - start), dim),
                                    dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + len(block)] = block
    return out


def clustered_unit_rows(num: int, queries: int, dim: int, seed: int,
                        chunk: int = 1 << 16
                        ) -> tuple[np.ndarray, np.ndarray]:
    """float32 [num, dim] "video" and [queries, dim] "text" unit vectors in
    num // 100 topics (see the module docstring)."""
    rng = np.random.default_rng(seed)
    topics = random_unit_rows(max(num // 100, 1), dim, seed + 1)
    video_mean, text_mean = random_unit_rows(2, dim, seed + 2)

    def rows(count: int, mean: np.ndarray) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, chunk):
            size = min(chunk, count - start)
            noise = rng.standard_normal((size, dim), dtype=np.float32)
            noise /= np.linalg.norm(noise, axis=1, keepdims=True)
            block = (mean + topics[rng.integers(0, len(topics), size)]
                     + np.float32(0.8) * noise)
            out[start:start + size] = block / np.linalg.norm(
                block, axis=1, keepdims=True)
        return out

    return rows(num, video_mean), rows(queries, text_mean)


def memory_index(embeddings: np.ndarray) -> VideoIndex:
    """A :class:`VideoIndex` of ``embeddings``, row i the video ``i.mp4``."""
    return VideoIndex(embeddings, dict(
        embeddings=EMBEDDINGS_FILE, dim=int(embeddings.shape[1]),
        videos=[dict(path=f'{i}.mp4') for i in range(len(embeddings))]))


def _rows(hits: list[dict]) -> list[int]:
    return [int(hit['path'][:-len('.mp4')]) for hit in hits]


def _timed(fn, args: list, warmup: int,
           keep: bool = True) -> tuple[list[float], list]:
    """``fn(a)`` for each ``a`` of ``args`` after ``fn`` on the first
    ``warmup`` of them: the seconds and (``keep``) the result of each call;
    without ``keep`` each result is dropped before the next call (a faiss
    graph of 1M vectors holds 2.3 GB)."""
    for arg in args[:warmup]:
        fn(arg)
    seconds, results = [], []
    for arg in args:
        start = perf_counter()
        result = fn(arg)
        seconds.append(perf_counter() - start)
        if keep:
            results.append(result)
        del result
    return seconds, results


def _ms(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return dict(calls=len(ms), median_ms=float(np.median(ms)),
                p99_ms=float(np.percentile(ms, 99)), max_ms=float(ms.max()))


def text_encoder(sizes, work_dir: Path, device: torch.device,
                 max_words: int) -> tuple[torch.nn.Module, Config]:
    """A CLIP4Clip-meanP of the run's CLIP (random weights) and a config
    whose test pipeline tokenises with a word-level tokenizer saved in
    ``work_dir``: what ``encode_query`` needs."""
    tokenizer = work_dir / 'search-tokenizer'
    build_tokenizer(list(CAPTIONS), tokenizer)
    cfg = Config(dict(
        model=dict(type='CLIP4Clip', head=dict(type='MeanPHead'),
                   backbone=dict(type='CLIPBackbone',
                                 config=copy.deepcopy(sizes.clip))),
        test_dataloader=dict(dataset=dict(pipeline=[dict(
            type='TokenizeCaptions', tokenizer=str(tokenizer),
            max_words=max_words)]))))
    torch.manual_seed(0)
    return init_retriever(cfg, device=device), cfg


def _query_encoding(model, cfg, tokenizer: str, calls: int) -> dict:
    """One query to a unit vector (``encode_query``: tokenizer load, query
    checks, tokenise, text tower) and the tokenizer load alone."""
    with torch.no_grad():
        encode, _ = _timed(lambda q: encode_query(model, cfg, q),
                           [QUERY] * calls, warmup=2)
    load, _ = _timed(load_tokenizer, [tokenizer] * calls, warmup=2)
    return dict(query=QUERY, encode_query=_ms(encode),
                load_tokenizer=_ms(load))


def _exact_vs_brute_force(index: VideoIndex, queries: np.ndarray,
                          results: list[list[dict]]) -> dict:
    """search_embedding's exact top 10 against one matrix product and
    ``topk`` over all queries (score by score: a tie may swap rows)."""
    scores = torch.from_numpy(index.embeddings) @ torch.from_numpy(queries).T
    best, rows = scores.topk(TOPK, dim=0)  # [TOPK, Q]
    ours = np.array([[hit['score'] for hit in hits] for hits in results])
    same_rows = [_rows(hits) == rows[:, q].tolist()
                 for q, hits in enumerate(results)]
    return dict(max_score_diff=float(np.abs(ours - best.T.numpy()).max()),
                same_rows=float(np.mean(same_rows)))


def _recall_by_depth(index: VideoIndex, graph, queries: np.ndarray,
                     exact: list[list[dict]], warmup: int) -> dict:
    """faiss recall@10 against ``exact`` and latency per ``ef_search``."""
    by_depth = {}
    for depth in EF_DEPTHS:
        times, approx = _timed(
            lambda q, d=depth: search_embedding(index, q, TOPK, 'faiss',
                                                graph=graph, ef_search=d),
            list(queries), warmup)
        by_depth[depth] = dict(latency=_ms(times), recall_at_10=float(
            np.mean([len(set(_rows(a)) & set(_rows(e))) / TOPK
                     for a, e in zip(approx, exact, strict=True)])))
    return by_depth


def _clustered(num: int, sizes, warmup: int) -> dict:
    """Exact and faiss on clustered vectors: build time, top-1 / 10th
    cosine of the exact hits, recall and latency per search depth."""
    vectors, queries = clustered_unit_rows(num, sizes.search_queries,
                                           sizes.embed_dim, seed=3)
    index = memory_index(vectors)
    exact = [search_embedding(index, q, TOPK) for q in queries]
    start = perf_counter()
    graph = faiss_graph(index)
    build_s = perf_counter() - start
    return dict(build_s=build_s,
                top1_cosine=float(np.mean([e[0]['score'] for e in exact])),
                top10_cosine=float(np.mean([e[-1]['score'] for e in exact])),
                ef=_recall_by_depth(index, graph, queries, exact, warmup))


def _random_vectors(num: int, sizes, model, cfg, work_dir: Path) -> dict:
    dim = sizes.embed_dim
    index = memory_index(random_unit_rows(num, dim, seed=0))
    queries = random_unit_rows(sizes.search_queries, dim, seed=1)
    warmup = min(sizes.search_warmup, len(queries))
    row = dict(n=num, dim=dim,
               embeddings_mib=index.embeddings.nbytes / 2**20)

    times, exact = _timed(lambda q: search_embedding(index, q, TOPK),
                          list(queries), warmup)
    row['exact'] = dict(latency=_ms(times),
                        **_exact_vs_brute_force(index, queries, exact))

    before = resident_mib()
    with peak_memory(torch.device('cpu')) as peak:
        start = perf_counter()
        graph = faiss_graph(index)
        build_s = perf_counter() - start
    faiss_row = dict(build_s=build_s, build_vectors_per_s=num / build_s,
                     peak_mib=peak.mib, held_mib=resident_mib() - before)
    times, approx = _timed(
        lambda q: search_embedding(index, q, TOPK, 'faiss', graph=graph),
        list(queries), warmup)
    faiss_row['latency'] = _ms(times)
    faiss_row['recall_at_10'] = float(np.mean([
        len(set(_rows(a)) & set(_rows(e))) / TOPK
        for a, e in zip(approx, exact, strict=True)]))
    stored = np.linspace(0, num - 1, min(sizes.search_queries, num)
                         ).astype(int)
    faiss_row['stored_vector_top1'] = float(np.mean([
        _rows(search_embedding(index, index.embeddings[r], 1, 'faiss',
                               graph=graph)) == [r] for r in stored]))
    faiss_row['top1_cosine'] = float(np.mean([e[0]['score']
                                               for e in exact]))
    faiss_row['ef'] = _recall_by_depth(index, graph, queries, exact, warmup)
    row['faiss'] = faiss_row

    # search_index as a user calls it: the text encoded on every call, and
    # the faiss graph read from the index folder's cache on every call.
    import faiss
    index_dir = work_dir / f'search-index-{num}'
    index_dir.mkdir(parents=True, exist_ok=True)
    cache = index_dir / f'faiss-{Path(EMBEDDINGS_FILE).stem}.index'
    faiss.write_index(graph, str(cache))
    faiss_row['cache_mib'] = cache.stat().st_size / 2**20
    read, _ = _timed(lambda _: faiss_graph(index, index_dir),
                     [None] * sizes.search_calls, warmup=1, keep=False)
    faiss_row['graph_read'] = _ms(read)
    text = encode_query(model, cfg, QUERY)
    for engine in ('exact', 'faiss'):
        with torch.no_grad():
            times, hits = _timed(
                lambda q, e=engine: search_index(model, cfg, index, q, TOPK,
                                                 e, index_dir),
                [QUERY] * sizes.search_calls, warmup=1)
        ranked = search_embedding(index, text, TOPK, engine, graph=graph)
        row[engine]['search_index'] = dict(
            _ms(times), same_as_search_embedding=hits[0] == ranked)
    shutil.rmtree(index_dir)
    return row


def _one_size(num: int, sizes, model, cfg, work_dir: Path) -> dict:
    """Random vectors (every measure), then clustered ones (recall)."""
    row = _random_vectors(num, sizes, model, cfg, work_dir)
    gc.collect()  # the random index and its graph (4 GB at 1M) go first
    row['clustered'] = _clustered(num, sizes,
                                  min(sizes.search_warmup,
                                      sizes.search_queries))
    return row


def search_latency(device: torch.device, sizes, work_dir: Path,
                   max_words: int) -> dict:
    """The ``search`` section (see the module docstring)."""
    import faiss

    model, cfg = text_encoder(sizes, work_dir, device, max_words)
    result = dict(topk=TOPK, torch_threads=torch.get_num_threads(),
                  faiss_threads=faiss.omp_get_max_threads(),
                  text=_query_encoding(model, cfg,
                                       str(work_dir / 'search-tokenizer'),
                                       sizes.search_calls),
                  runs=[])
    for num in sizes.search_sizes:
        result['runs'].append(_one_size(num, sizes, model, cfg, work_dir))
        gc.collect()
    return result
