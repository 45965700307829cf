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

Both files are checked whenever an index is loaded or saved (types, keys,
relative unique paths, the array's dtype and shape against ``dim`` and
``videos``, finite unit rows): a malformed index is an
:class:`InvalidIndexError` naming the file and what is wrong with it, never
a ranking.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import torch
from mmengine.config import Config

from mmclip4clip.datasets.video_files import find_videos
from mmclip4clip.utils import atomic_path, atomic_write

from .encode import (
    check_finite_rows,
    encode_query,
    encode_videos,
    video_pipeline_cfg,
)

INDEX_FORMAT = 'mmclip4clip-video-index'
INDEX_VERSION = 1
META_FILE = 'index.json'
EMBEDDINGS_NAME = re.compile(r'embeddings-[0-9a-f]+\.npy')
# How far a stored row may be from unit length (float32 rounding only).
UNIT_TOLERANCE = 1e-3

# The keys of index.json and of its records, with the JSON types allowed.
_META_FIELDS = dict(format=str, version=int, fingerprint=str, config=str,
                    checkpoint=(str, type(None)), video_dir=str,
                    embeddings=str, dim=int, videos=list, skipped=list)
_VIDEO_FIELDS = dict(path=str, size=int, mtime_ns=int, duration=(int, float))
_SKIPPED_FIELDS = dict(path=str, size=int, mtime_ns=int, error=str)


class InvalidIndexError(ValueError):
    """An index directory whose index.json or embeddings file is malformed
    (the message names the file and the fault)."""


@dataclass
class VideoIndex:
    """Loaded index: ``embeddings`` [M, D] and the ``meta`` of index.json."""
    embeddings: np.ndarray
    meta: dict

    @property
    def videos(self) -> list[dict]:
        return self.meta['videos']


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


def _type_names(types) -> str:
    types = types if isinstance(types, tuple) else (types, )
    return ' or '.join('null' if t is type(None) else t.__name__
                       for t in types)


def _check_fields(record, fields: dict, where: str) -> None:
    """``record`` is a JSON object holding ``fields`` (key -> types)."""
    if not isinstance(record, dict):
        raise InvalidIndexError(f'{where} is not a JSON object but '
                                f'{type(record).__name__}')
    missing = [key for key in fields if key not in record]
    if missing:
        raise InvalidIndexError(f'{where} is missing key(s) '
                                f'{", ".join(missing)}')
    for key, types in fields.items():
        value = record[key]
        # bool is an int to Python, never to the index.
        if isinstance(value, bool) or not isinstance(value, types):
            raise InvalidIndexError(
                f'{where}: {key} must be {_type_names(types)}, not '
                f'{type(value).__name__} {str(value)[:40]!r}')


def _check_relative(path: str, where: str) -> None:
    """A video path must stay inside the video folder: relative, normalised,
    no ``..``."""
    pure = PurePosixPath(path)
    if (not path or pure.is_absolute() or '..' in pure.parts
            or pure.as_posix() != path):
        raise InvalidIndexError(
            f'{where}: path {path!r} is not a normalised path relative to '
            'the video folder')


def check_meta(meta, meta_path: str | Path) -> None:
    """Raise :class:`InvalidIndexError` naming ``meta_path`` unless ``meta``
    is a well-formed index.json (see the module docstring)."""
    _check_fields(meta, _META_FIELDS, str(meta_path))
    if meta['format'] != INDEX_FORMAT or meta['version'] != INDEX_VERSION:
        raise InvalidIndexError(
            f'{meta_path} is not a version {INDEX_VERSION} {INDEX_FORMAT} '
            f'file (format {meta["format"]!r}, version {meta["version"]!r})')
    if not EMBEDDINGS_NAME.fullmatch(meta['embeddings']):
        raise InvalidIndexError(
            f'{meta_path}: embeddings {meta["embeddings"]!r} is not an '
            'embeddings-<hash>.npy file name in the index folder')
    if meta['dim'] < 0 or (meta['dim'] == 0 and meta['videos']):
        raise InvalidIndexError(f'{meta_path}: dim {meta["dim"]} is not a '
                                'positive embedding width')
    seen: set[str] = set()
    for key, fields in (('videos', _VIDEO_FIELDS),
                        ('skipped', _SKIPPED_FIELDS)):
        for row, record in enumerate(meta[key]):
            where = f'{meta_path}: {key}[{row}]'
            _check_fields(record, fields, where)
            _check_relative(record['path'], where)
            if record['path'] in seen:
                raise InvalidIndexError(
                    f'{where}: {record["path"]!r} is listed more than once')
            seen.add(record['path'])


def check_embeddings(embeddings: np.ndarray, meta: dict,
                     path: str | Path) -> None:
    """Raise :class:`InvalidIndexError` naming ``path`` unless
    ``embeddings`` is float32 [len(videos), dim] with finite unit rows."""
    videos = meta['videos']
    if embeddings.dtype != np.float32 or embeddings.shape != (len(videos),
                                                              meta['dim']):
        raise InvalidIndexError(
            f'{path}: embeddings are {embeddings.dtype} {embeddings.shape}, '
            f'but index.json lists {len(videos)} videos of dim '
            f'{meta["dim"]}: float32 ({len(videos)}, {meta["dim"]})')
    try:
        check_finite_rows(embeddings, [v['path'] for v in videos],
                          'video(s)')
    except ValueError as err:
        raise InvalidIndexError(f'{path}: {err}') from None
    norms = np.linalg.norm(embeddings, axis=1)
    off = np.flatnonzero(np.abs(norms - 1) > UNIT_TOLERANCE)
    if len(off):
        raise InvalidIndexError(
            f'{path}: {len(off)} rows are not unit vectors (first: '
            f'{videos[off[0]]["path"]!r}, norm {norms[off[0]]:.4g})')


def _reject_constant(name: str):
    raise ValueError(f'{name} is not a JSON number')


def read_meta(meta_path: Path) -> dict:
    """index.json as checked by :func:`check_meta` (strict JSON: no NaN or
    Infinity)."""
    try:
        meta = json.loads(meta_path.read_text(encoding='utf-8'),
                          parse_constant=_reject_constant)
    except UnicodeDecodeError as err:
        raise InvalidIndexError(f'{meta_path}: not UTF-8 text ({err})') from None
    except ValueError as err:  # json.JSONDecodeError and NaN constants
        raise InvalidIndexError(f'{meta_path}: not valid JSON ({err})') from None
    check_meta(meta, meta_path)
    return meta


def load_index(index_dir: str | Path) -> VideoIndex:
    """Read and check an index directory without unpickling anything.

    Raises FileNotFoundError when ``index_dir`` holds no index.json and
    :class:`InvalidIndexError` (a ValueError) naming the file at fault when
    either file is malformed.
    """
    index_dir = Path(index_dir)
    meta_path = index_dir / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f'{index_dir} is not a video index: no '
                                f'{META_FILE}')
    meta = read_meta(meta_path)
    emb_path = index_dir / meta['embeddings']
    if not emb_path.is_file():
        raise InvalidIndexError(f'{emb_path}, named by {meta_path}, is '
                                'missing')
    try:
        emb = np.load(emb_path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        message = ' '.join(str(err).split())
        raise InvalidIndexError(f'{emb_path}: not a plain .npy array '
                                f'({message})') from None
    if not isinstance(emb, np.ndarray):
        raise InvalidIndexError(f'{emb_path}: not a .npy array')
    check_embeddings(emb, meta, emb_path)
    return VideoIndex(emb, meta)


def save_index(index_dir: str | Path, embeddings: np.ndarray,
               meta: dict) -> None:
    """Write embeddings then index.json (the commit point); drop stale
    embedding files. Both are checked first, as :func:`load_index` does, so
    nothing is written that could not be read back."""
    index_dir = Path(index_dir)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    name = ('embeddings-' +
            hashlib.sha256(embeddings.tobytes()).hexdigest()[:16] + '.npy')
    meta = dict(meta, embeddings=name, dim=int(embeddings.shape[1]))
    check_meta(meta, index_dir / META_FILE)
    check_embeddings(embeddings, meta, index_dir / name)

    index_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(index_dir / name) as f:
        np.save(f, embeddings, allow_pickle=False)
    with atomic_write(index_dir / META_FILE, 'w', encoding='utf-8') as f:
        json.dump(meta, f, indent=1, allow_nan=False)
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
    if not video_dir.is_dir():
        # An empty listing would drop every indexed video.
        raise FileNotFoundError(f'video folder {video_dir} does not exist '
                                'or is not a directory')
    fingerprint = model_fingerprint(cfg, checkpoint)
    old_rows: dict[str, tuple[dict, np.ndarray]] = {}
    old_skipped: dict[str, dict] = {}
    if (index_dir / META_FILE).is_file() and not rebuild:
        try:
            old = load_index(index_dir)
        except InvalidIndexError as err:
            raise InvalidIndexError(
                f'{err}; pass --rebuild to re-encode everything into it, or '
                'choose another index path') from None
        if old.meta['fingerprint'] != fingerprint:
            raise ValueError(
                f'{index_dir} was built with another model, checkpoint or '
                f'video pipeline (config {old.meta["config"]}, checkpoint '
                f'{old.meta["checkpoint"]}); pass --rebuild to re-encode '
                'everything, or choose another index path')
        old_rows = {v['path']: (v, old.embeddings[i])
                    for i, v in enumerate(old.videos)}
        old_skipped = {s['path']: s for s in old.meta['skipped']}

    files = [path.relative_to(video_dir).as_posix()
             for path in find_videos(video_dir)]
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

    The query is checked by :func:`~.encode.check_query` (errors for an
    empty or unreadable query, a ``QueryWarning`` naming unknown words).
    ``engine='exact'`` is one matrix product. ``engine='faiss'`` searches an
    approximate HNSW graph (the ``faiss-cpu`` extra), for indexes too large
    for exact search; with ``index_dir`` the graph is cached there as
    ``faiss-<embeddings file>.index`` (faiss' own binary format, no pickle)
    and rebuilt whenever the embeddings change.
    """
    if (isinstance(topk, bool) or not isinstance(topk, (int, np.integer))
            or topk < 1):
        raise ValueError(f'topk must be a positive integer, not {topk!r}')
    if engine not in ('exact', 'faiss'):
        raise ValueError(f'unknown engine {engine!r}: exact or faiss')
    text = encode_query(model, cfg, query)  # [D]
    if index.embeddings.shape[0] == 0:
        return []
    if engine == 'exact':
        scores = index.embeddings @ text  # [M]
        order = np.argsort(-scores, kind='stable')[:topk]
        return [dict(path=index.videos[i]['path'], score=float(scores[i]))
                for i in order]
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

    Each hit keeps its loose ``score`` and gains ``tight_score``: the logit,
    or None for a file the tight model cannot read (those go last).
    """
    from .encode import tight_scores

    paths = [Path(video_dir) / hit['path'] for hit in hits]
    scores = tight_scores(tight_model, tight_cfg, query, paths)
    ranked = [dict(hit, tight_score=None if np.isnan(score) else float(score))
              for hit, score in zip(hits, scores, strict=True)]
    return sorted(ranked, key=lambda h: (h['tight_score'] is None,
                                         -(h['tight_score'] or 0.0)))
