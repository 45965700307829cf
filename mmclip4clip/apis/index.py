"""A video index on disk: build it incrementally, load it, search it.

Layout of an index directory (nothing in it is ever unpickled)::

    INDEX/
      index.json              metadata, written last (the commit point)
      embeddings-<hash>.npy   float32 [M, D] unit vectors, row i = videos[i]

``index.json`` holds ``format`` ("mmclip4clip-video-index"), ``version``,
``fingerprint`` (sha256 of the model config, the video pipeline and the
checkpoint's bytes), ``config``, ``checkpoint`` and ``video_dir`` (absolute
paths), ``embeddings`` (the .npy file name), ``dim``, ``videos`` (one entry
per row: ``path`` relative to ``video_dir``, ``size``, ``mtime_ns``,
``duration``) and ``skipped`` (files that failed: ``path``, ``size``,
``mtime_ns``, ``error``). A new ``embeddings-<hash>.npy`` is written before
``index.json`` is replaced, so a reader always sees a matching pair. An
optional ``faiss-embeddings-<hash>.index`` caches the approximate search
graph of those embeddings.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from mmengine.config import Config

from mmclip4clip.utils import atomic_path, atomic_write

from .encode import encode_texts, encode_videos, video_pipeline_cfg

INDEX_FORMAT = 'mmclip4clip-video-index'
INDEX_VERSION = 1
META_FILE = 'index.json'
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.mov', '.webm', '.m4v', '.mpg',
                    '.mpeg', '.wmv', '.flv', '.3gp', '.ts')


@dataclass
class VideoIndex:
    """Loaded index: ``embeddings`` [M, D] and the ``meta`` of index.json."""
    embeddings: np.ndarray
    meta: dict

    @property
    def videos(self) -> list[dict]:
        return self.meta['videos']


def find_videos(video_dir: str | Path) -> list[str]:
    """Video files under ``video_dir`` (by extension, recursively) as sorted
    POSIX paths relative to it."""
    root = Path(video_dir)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob('*')
                  if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def _sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(cfg: Config, checkpoint: str | Path | None) -> str:
    """sha256 of what decides an embedding: the model config, the video
    pipeline and the checkpoint's bytes."""
    spec = dict(model=cfg.model.to_dict() if hasattr(cfg.model, 'to_dict')
                else dict(cfg.model),
                pipeline=video_pipeline_cfg(cfg),
                checkpoint=_sha256_file(checkpoint) if checkpoint else None)
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_index(index_dir: str | Path) -> VideoIndex:
    """Read an index directory without unpickling anything."""
    index_dir = Path(index_dir)
    meta_path = index_dir / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f'{index_dir} is not a video index: no '
                                f'{META_FILE}')
    meta = json.loads(meta_path.read_text())
    if meta.get('format') != INDEX_FORMAT or meta.get(
            'version') != INDEX_VERSION:
        raise ValueError(f'{meta_path} is not a version {INDEX_VERSION} '
                         f'{INDEX_FORMAT} file')
    emb = np.load(index_dir / meta['embeddings'], allow_pickle=False)
    if emb.dtype != np.float32 or emb.ndim != 2 or len(emb) != len(
            meta['videos']):
        raise ValueError(f'{index_dir}: embeddings {emb.dtype} {emb.shape} do '
                         f'not match {len(meta["videos"])} videos')
    return VideoIndex(emb, meta)


def save_index(index_dir: str | Path, embeddings: np.ndarray,
               meta: dict) -> None:
    """Write embeddings then index.json (the commit point); drop stale
    embedding files."""
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    name = ('embeddings-' +
            hashlib.sha256(embeddings.tobytes()).hexdigest()[:16] + '.npy')

    with atomic_write(index_dir / name) as f:
        np.save(f, embeddings, allow_pickle=False)
    meta = dict(meta, embeddings=name, dim=int(embeddings.shape[1]))
    with atomic_write(index_dir / META_FILE, 'w', encoding='utf-8') as f:
        json.dump(meta, f, indent=1)
    for old in index_dir.glob('embeddings-*.npy'):
        if old.name != name:
            old.unlink()


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def update_index(model: torch.nn.Module,
                 cfg: Config,
                 video_dir: str | Path,
                 index_dir: str | Path,
                 config_path: str | Path,
                 checkpoint: str | Path | None,
                 batch_size: int = 8,
                 num_workers: int = 0,
                 rebuild: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> dict:
    """Add new or changed videos of ``video_dir`` to the index; drop removed
    ones. A file is unchanged when its size and mtime are; an unchanged file
    that failed before is not retried. Broken files are skipped.

    Returns counts ``added``, ``updated``, ``unchanged``, ``removed`` and
    ``encoded``, and ``skipped``: a list of ``{path, error}``.
    Raises ValueError when the index was made with another model or
    pipeline (fingerprint), unless ``rebuild``.
    """
    video_dir, index_dir = Path(video_dir), Path(index_dir)
    fingerprint = model_fingerprint(cfg, checkpoint)
    old_rows: dict[str, tuple[dict, np.ndarray]] = {}
    old_skipped: dict[str, dict] = {}
    if (index_dir / META_FILE).is_file() and not rebuild:
        old = load_index(index_dir)
        if old.meta['fingerprint'] != fingerprint:
            raise ValueError(
                f'{index_dir} was built with another model, checkpoint or '
                f'video pipeline (config {old.meta["config"]}, checkpoint '
                f'{old.meta["checkpoint"]}); pass --rebuild to re-encode '
                'everything, or choose another index path')
        old_rows = {v['path']: (v, old.embeddings[i])
                    for i, v in enumerate(old.videos)}
        old_skipped = {s['path']: s for s in old.meta.get('skipped', [])}

    files = find_videos(video_dir)
    stats = {rel: _stat(video_dir / rel) for rel in files}
    todo, skipped, counts = [], [], dict(added=0, updated=0, unchanged=0)
    for rel in files:
        size, mtime = stats[rel]
        prev = old_rows.get(rel, (None, None))[0] or old_skipped.get(rel)
        if prev is not None and (prev['size'], prev['mtime_ns']) == (size,
                                                                     mtime):
            if rel in old_skipped and rel not in old_rows:
                skipped.append(old_skipped[rel])
            else:
                counts['unchanged'] += 1
            continue
        todo.append(rel)
    emb, info = encode_videos(model, cfg, [video_dir / r for r in todo],
                              batch_size, num_workers, progress)
    new_rows, row = {}, 0
    for rel, item in zip(todo, info):
        size, mtime = stats[rel]
        if item['error'] is not None:
            skipped.append(dict(path=rel, size=size, mtime_ns=mtime,
                                error=item['error']))
            continue
        counts['updated' if rel in old_rows else 'added'] += 1
        new_rows[rel] = (dict(path=rel, size=size, mtime_ns=mtime,
                              duration=item['duration']), emb[row])
        row += 1

    videos, vectors = [], []
    for rel in files:
        entry = new_rows.get(rel)
        if entry is None and rel in old_rows and rel not in todo:
            entry = old_rows[rel]
        if entry is not None:
            videos.append(entry[0])
            vectors.append(entry[1])
    dim = emb.shape[1] if len(emb) else (
        len(vectors[0]) if vectors else 0)
    embeddings = (np.stack(vectors) if vectors else
                  np.zeros((0, dim), dtype=np.float32))
    meta = dict(format=INDEX_FORMAT, version=INDEX_VERSION,
                fingerprint=fingerprint,
                config=str(Path(config_path).resolve()),
                checkpoint=str(Path(checkpoint).resolve()) if checkpoint
                else None,
                video_dir=str(video_dir.resolve()),
                videos=videos, skipped=skipped)
    save_index(index_dir, embeddings, meta)
    removed = len(set(old_rows) - set(files))
    return dict(counts, removed=removed, encoded=len(todo),
                total=len(videos),
                skipped=[dict(path=s['path'], error=s['error'])
                         for s in skipped])


def search_index(model: torch.nn.Module, cfg: Config, index: VideoIndex,
                 query: str, topk: int = 10, engine: str = 'exact',
                 index_dir: str | Path | None = None) -> list[dict]:
    """The ``topk`` videos by cosine similarity to ``query``, best first, as
    ``{path, score}`` (path relative to the video folder).

    ``engine='exact'`` is one matrix product. ``engine='faiss'`` searches an
    approximate HNSW graph (the ``faiss-cpu`` extra), for indexes too large
    for exact search; with ``index_dir`` the graph is cached there as
    ``faiss-<embeddings file>.index`` (faiss' own binary format, no pickle)
    and rebuilt whenever the embeddings change.
    """
    if index.embeddings.shape[0] == 0:
        return []
    text = encode_texts(model, cfg, [query])[0]  # [D]
    if engine == 'exact':
        scores = index.embeddings @ text  # [M]
        order = np.argsort(-scores, kind='stable')[:topk]
        return [dict(path=index.videos[i]['path'], score=float(scores[i]))
                for i in order]
    if engine != 'faiss':
        raise ValueError(f'unknown engine {engine!r}: exact or faiss')
    graph = faiss_graph(index, index_dir)
    scores, rows = graph.search(text[None].astype(np.float32),
                                min(topk, len(index.videos)))
    return [dict(path=index.videos[i]['path'], score=float(score))
            for i, score in zip(rows[0], scores[0], strict=True) if i >= 0]


def faiss_graph(index: VideoIndex, index_dir: str | Path | None = None,
                neighbours: int = 32, ef_search: int = 128):
    """An HNSW inner-product graph over the index's embeddings, loaded from
    or cached in ``index_dir`` when given."""
    try:
        import faiss
    except ImportError as err:
        raise ImportError('engine faiss needs faiss-cpu: pip install -e '
                          '".[search]"') from err
    cache = None if index_dir is None else (
        Path(index_dir) / f'faiss-{Path(index.meta["embeddings"]).stem}.index')
    if cache is not None and cache.is_file():
        graph = faiss.read_index(str(cache))
    else:
        graph = faiss.IndexHNSWFlat(index.embeddings.shape[1], neighbours,
                                    faiss.METRIC_INNER_PRODUCT)
        graph.add(np.ascontiguousarray(index.embeddings, dtype=np.float32))
        if cache is not None:
            with atomic_path(cache) as tmp:
                faiss.write_index(graph, str(tmp))
            for old in cache.parent.glob('faiss-*.index'):
                if old != cache:
                    old.unlink()
    graph.hnsw.efSearch = ef_search
    return graph

def rerank_with_tight(hits: list[dict], tight_model: torch.nn.Module,
                      tight_cfg: Config, video_dir: str | Path,
                      query: str) -> list[dict]:
    """Re-order a loose shortlist by a tightTransf model's pair logits.

    Each hit keeps its loose ``score`` and gains ``tight_score``; files the
    tight model cannot read go last.
    """
    from .encode import tight_scores

    paths = [Path(video_dir) / hit['path'] for hit in hits]
    scores = tight_scores(tight_model, tight_cfg, query, paths)
    ranked = [dict(hit, tight_score=float(score))
              for hit, score in zip(hits, scores, strict=True)]
    return sorted(ranked, key=lambda h: (np.isnan(h['tight_score']),
                                         -np.nan_to_num(h['tight_score'])))
