"""A video index on disk: build it incrementally, load it, search it.

Layout of an index directory (nothing in it is ever unpickled)::

    INDEX/
      index.json              metadata, written last (the commit point)
      embeddings-<hash>.npy   float32 [M, D] unit vectors, row i = videos[i]
      .progress/              only while an update runs or after it was
                              killed: what it has encoded (ShardProgress)

``index.json`` holds ``format`` ("mmclip4clip-video-index"), ``version``,
``fingerprint`` (sha256 of the model config, the video pipeline and the
checkpoint's bytes, or without a checkpoint the bytes of the local CLIP
directory's config and weights), ``config``, ``checkpoint`` and ``video_dir`` (absolute
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

import functools
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from mmengine.config import Config
from threadpoolctl import ThreadpoolController

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
# faiss HNSW search: candidates kept per query unless told otherwise.
EF_SEARCH = 128
# Progress of an unfinished update (ShardProgress), inside the index folder.
PROGRESS_DIR = '.progress'
# Videos encoded between two commits of that progress: what a kill loses.
DEFAULT_COMMIT_EVERY = 256

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


# Files of a Hugging Face CLIP directory that decide its weights:
# config.json and the weights (safetensors, or PyTorch .bin, either maybe
# sharded with a .index.json).
_WEIGHT_SUFFIXES = ('.json', '.safetensors', '.bin')


def _pretrained_digest(cfg: Config) -> str | None:
    """sha256 over the config and weight files of the backbone's local
    ``pretrained`` directory; None when it is not a local directory (a hub
    id: its files are the hub's)."""
    backbone = cfg.model.get('backbone') or {}
    pretrained = backbone.get('pretrained')
    if not pretrained or not Path(pretrained).is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(Path(pretrained).iterdir()):
        if path.is_file() and path.suffix in _WEIGHT_SUFFIXES:
            digest.update(f'{path.name}:{_sha256_file(path)}\n'.encode())
    return digest.hexdigest()


def model_fingerprint(cfg: Config, checkpoint: str | Path | None) -> str:
    """sha256 of what decides an embedding: the model config, the video
    pipeline and the checkpoint's bytes; without a checkpoint, the bytes of
    the backbone's local ``pretrained`` directory instead (so weights
    replaced in place are not mistaken for the ones the index was built
    with)."""
    spec = dict(model=cfg.model.to_dict() if hasattr(cfg.model, 'to_dict')
                else dict(cfg.model),
                pipeline=video_pipeline_cfg(cfg),
                checkpoint=_sha256_file(checkpoint) if checkpoint else None)
    # Only then, and only for a local directory: other indexes keep the
    # fingerprint they were built with.
    if not checkpoint and (digest := _pretrained_digest(cfg)):
        spec['pretrained'] = digest
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


class ShardProgress:
    """The videos one rank has encoded so far in an unfinished update, kept
    in ``INDEX/.progress/rank<R>-of-<W>/`` so that a killed run resumes:

    - ``job.json``: what the progress belongs to (model fingerprint, video
      folder, the index it updates, batch size, number of ranks, and a
      sha256 of this rank's list of videos with their sizes and mtimes);
    - ``chunk-<K>.npy``: float32 [n, D] embeddings of chunk K's good videos;
    - ``chunk-<K>.json``: chunk K's ``videos`` (``path``, ``duration``,
      ``error``), written after its .npy: the commit point of the chunk.

    Chunks are consecutive slices of the rank's list, each written once, so
    a commit costs its own rows, not the whole run's. Nothing is unpickled.
    """

    def __init__(self, index_dir: str | Path, rank: int,
                 world_size: int) -> None:
        self.root = Path(index_dir) / PROGRESS_DIR
        self.folder = self.root / f'rank{rank}-of-{world_size}'

    def _chunk(self, k: int, suffix: str) -> Path:
        return self.folder / f'chunk-{k:06d}.{suffix}'

    def _check_job(self, job: dict) -> bool:
        """True when the folder holds progress of ``job`` (resume); False
        when it holds none or that of a finished or superseded update of
        an older index (cleared). Raises ValueError naming job.json when it
        belongs to another model, folder, video list or batch size."""
        path = self.folder / 'job.json'
        if not path.is_file():
            return False
        try:
            stored = json.loads(path.read_text(encoding='utf-8'))
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f'{path}: not valid JSON ({err}); delete '
                             f'{self.root} to start over') from None
        if not isinstance(stored, dict) or stored.get('base') != job['base']:
            # Made against another state of the index: nothing to resume.
            shutil.rmtree(self.folder)
            return False
        differ = [key for key in job if stored.get(key) != job[key]]
        if differ:
            raise ValueError(
                f'{path} holds the progress of another indexing run '
                f'(different {", ".join(differ)}): rerun with the same '
                f'model, video folder and --batch-size, or delete '
                f'{self.root} to start over')
        return True

    def _read_chunks(self, videos: list[str] | None = None
                     ) -> tuple[list[dict], list[np.ndarray]]:
        """The committed chunks in order: (info per video, [n, D] arrays).
        With ``videos``, each chunk must list the next of them."""
        info: list[dict] = []
        arrays: list[np.ndarray] = []
        k = 0
        while self._chunk(k, 'json').is_file():
            meta_path = self._chunk(k, 'json')
            try:
                items = json.loads(meta_path.read_text(encoding='utf-8'))
                paths = [item['path'] for item in items]
                good = [item['path'] for item in items
                        if item['error'] is None]
            except (ValueError, UnicodeDecodeError, KeyError,
                    TypeError) as err:
                raise ValueError(f'{meta_path}: not a list of videos '
                                 f'({err!r}); delete {self.root} to start '
                                 'over') from None
            if videos is not None and \
                    paths != videos[len(info):len(info) + len(paths)]:
                raise ValueError(f'{meta_path} does not list the videos '
                                 f'that follow; delete {self.root} to '
                                 'start over')
            emb = np.load(self._chunk(k, 'npy'), allow_pickle=False)
            if emb.dtype != np.float32 or emb.ndim != 2 or \
                    len(emb) != len(good):
                raise ValueError(
                    f'{self._chunk(k, "npy")}: {emb.dtype} {emb.shape}, not '
                    f'float32 with one row per good video of {meta_path} '
                    f'({len(good)}); delete {self.root} to start over')
            check_finite_rows(emb, good, 'video(s)')
            info += items
            arrays.append(emb)
            k += 1
        return info, arrays

    def read_done(self) -> tuple[list[dict], np.ndarray]:
        """Every committed video of this rank: (info, [K, D] embeddings)."""
        info, arrays = self._read_chunks()
        arrays = [a for a in arrays if len(a)]
        emb = (np.concatenate(arrays) if arrays else
               np.zeros((0, 0), dtype=np.float32))
        return info, emb

    def encode(self, model: torch.nn.Module, cfg: Config, video_dir: Path,
               videos: list[tuple[str, int, int]], job: dict, step: int,
               batch_size: int, num_workers: int,
               progress: Callable[[int, int], None] | None) -> int:
        """Encode ``videos`` (``(path, size, mtime_ns)``) ``step`` at a
        time, committing each chunk; skip the chunks a killed run already
        committed. Returns how many videos were resumed."""
        listing = json.dumps(videos).encode()
        job = dict(job, num_videos=len(videos),
                   videos_sha256=hashlib.sha256(listing).hexdigest())
        paths = [rel for rel, _, _ in videos]
        done = chunks = 0
        if self._check_job(job):
            info, arrays = self._read_chunks(paths)
            done, chunks = len(info), len(arrays)
        else:
            for stale in self.folder.glob('chunk-*'):
                stale.unlink()
        resumed = done
        if progress is not None:
            progress(done, len(paths))
        while done < len(paths):
            chunk = paths[done:done + step]

            def chunk_progress(finished: int, _: int, start: int = done
                               ) -> None:
                if progress is not None:
                    progress(start + finished, len(paths))

            emb, info = encode_videos(
                model, cfg, [video_dir / rel for rel in chunk], batch_size,
                num_workers, chunk_progress)
            if chunks == 0:  # written with the first chunk: a run that
                # fails before it (a broken model) leaves nothing behind.
                self.folder.mkdir(parents=True, exist_ok=True)
                with atomic_write(self.folder / 'job.json', 'w',
                                  encoding='utf-8') as f:
                    json.dump(job, f, indent=1)
            with atomic_write(self._chunk(chunks, 'npy')) as f:
                np.save(f, emb, allow_pickle=False)
            items = [dict(path=rel, duration=item['duration'],
                          error=item['error'])
                     for rel, item in zip(chunk, info, strict=True)]
            with atomic_write(self._chunk(chunks, 'json'), 'w',
                              encoding='utf-8') as f:
                json.dump(items, f, allow_nan=False)
            done += len(chunk)
            chunks += 1
        return resumed


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _dist_info() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_bounds(total: int, batch_size: int, rank: int,
                 world_size: int) -> tuple[int, int]:
    """The contiguous slice ``[start, end)`` of ``total`` videos that
    ``rank`` encodes: whole batches, spread evenly over the ranks.

    In whole batches so that every batch is one that a single process would
    form too: the merged index is then the single-process one bit for bit.
    """
    batches = -(-total // batch_size)
    first = rank * batches // world_size
    last = (rank + 1) * batches // world_size
    return min(first * batch_size, total), min(last * batch_size, total)


def _all_ranks_ok(error: BaseException | None) -> None:
    """Collective: raise ``error``, or a RuntimeError naming a failed peer,
    on every rank when any rank failed; return when none did. Without a
    process group just raise ``error`` if given."""
    rank, world_size = _dist_info()
    messages: list = [None] * world_size
    if world_size > 1:
        dist.all_gather_object(
            messages, None if error is None else
            f'{type(error).__name__}: {error}')
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        raise RuntimeError(f'rank {failed[0][0]} failed: {failed[0][1]}')


def _load_old_index(index_dir: Path, fingerprint: str,
                    rebuild: bool) -> VideoIndex | None:
    """The index to update, checked against ``fingerprint``; None when
    there is none or ``rebuild``."""
    if not (index_dir / META_FILE).is_file() or rebuild:
        return None
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
    return old


def update_index(model: torch.nn.Module,
                 cfg: Config,
                 video_dir: str | Path,
                 index_dir: str | Path,
                 config_path: str | Path,
                 checkpoint: str | Path | None,
                 batch_size: int = 8,
                 num_workers: int = 0,
                 rebuild: bool = False,
                 progress: Callable[[int, int], None] | None = None,
                 commit_every: int = DEFAULT_COMMIT_EVERY) -> dict:
    """Add new or changed videos of ``video_dir`` to the index; drop removed
    ones. A file is unchanged when its size and mtime are; an unchanged file
    that failed before is not retried. Broken files are skipped.

    Resumable: the videos encoded so far are committed every
    ``commit_every`` videos (rounded down to whole batches, at least one)
    to ``INDEX/.progress/`` (:class:`ShardProgress`), and a rerun after a
    kill continues from there; the index itself is only written at the end,
    the same as an uninterrupted run's. Under ``torch.distributed`` each
    rank encodes its shard (:func:`shard_bounds`) and rank 0 writes the
    index in the single-process order (the index folder must be shared).
    ``progress(done, total)`` counts this rank's videos, starting from those
    a resumed run had already done.

    Returns counts ``added``, ``updated``, ``unchanged``, ``removed``,
    ``encoded`` (videos to encode in this update, resumed ones included),
    ``resumed`` and ``total``, and ``skipped``: a list of ``{path, error}``.
    Raises ValueError when the index was made with another model or
    pipeline (fingerprint), unless ``rebuild``, and when the progress
    folder holds another job's progress (naming the file).
    """
    video_dir, index_dir = Path(video_dir), Path(index_dir)
    if not video_dir.is_dir():
        # An empty listing would drop every indexed video.
        raise FileNotFoundError(f'video folder {video_dir} does not exist '
                                'or is not a directory')
    rank, world_size = _dist_info()
    fingerprint = model_fingerprint(cfg, checkpoint)
    old = _load_old_index(index_dir, fingerprint, rebuild)
    old_rows: dict[str, tuple[dict, np.ndarray]] = {}
    old_skipped: dict[str, dict] = {}
    if old is not None:
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

    job = dict(fingerprint=fingerprint, video_dir=str(video_dir.resolve()),
               base=old.meta['embeddings'] if old is not None else None,
               batch_size=batch_size, world_size=world_size)
    step = max(batch_size, commit_every // batch_size * batch_size)
    start, end = shard_bounds(len(todo), batch_size, rank, world_size)
    shard = ShardProgress(index_dir, rank, world_size)
    error = None
    try:
        resumed = shard.encode(
            model, cfg, video_dir,
            [(rel, *stats[rel]) for rel in todo[start:end]], job, step,
            batch_size, num_workers, progress)
    except Exception as err:  # every rank must hear of it
        error = err
    _all_ranks_ok(error)
    if rank != 0:
        _all_ranks_ok(None)  # wait until rank 0 has written the index
        return dict(counts, removed=0, encoded=end - start, resumed=resumed,
                    total=0, skipped=[])
    error = None
    try:
        info, emb = [], []
        for peer in range(world_size):
            peer_info, peer_emb = ShardProgress(
                index_dir, peer, world_size).read_done()
            info += peer_info
            emb.append(peer_emb)
        if [item['path'] for item in info] != todo:
            raise RuntimeError(
                f'{shard.root}: the ranks\' progress does not cover the '
                'videos to encode; delete that folder and run again')
        emb = [rows for rows in emb if len(rows)]
        emb = np.concatenate(emb) if emb else np.zeros((0, 0), np.float32)
        summary = _write_updated_index(
            index_dir, video_dir, files, stats, todo, info, emb, old_rows,
            skipped, counts, fingerprint, config_path, checkpoint)
        if shard.root.exists():
            shutil.rmtree(shard.root)
    except Exception as err:
        error = err
    if world_size > 1:
        _all_ranks_ok(error)
    elif error is not None:
        raise error
    return dict(summary, resumed=resumed)


def _write_updated_index(index_dir: Path, video_dir: Path, files: list[str],
                         stats: dict, todo: list[str], info: list[dict],
                         emb: np.ndarray,
                         old_rows: dict[str, tuple[dict, np.ndarray]],
                         skipped: list[dict], counts: dict,
                         fingerprint: str, config_path: str | Path,
                         checkpoint: str | Path | None) -> dict:
    """Merge the encoded ``todo`` videos (``info`` per video, ``emb`` [K, D]
    for the good ones, in order) with the kept rows in the order of
    ``files``; save the index; return the summary counts."""
    new_rows, row = {}, 0
    for rel, item in zip(todo, info, strict=True):
        size, mtime = stats[rel]
        if item['error'] is not None:
            skipped.append(dict(path=rel, size=size, mtime_ns=mtime,
                                error=item['error']))
            continue
        counts['updated' if rel in old_rows else 'added'] += 1
        new_rows[rel] = (dict(path=rel, size=size, mtime_ns=mtime,
                              duration=item['duration']), emb[row])
        row += 1

    todo_set = set(todo)
    videos, vectors = [], []
    for rel in files:
        entry = new_rows.get(rel)
        if entry is None and rel in old_rows and rel not in todo_set:
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


def _is_positive_int(value) -> bool:
    return (not isinstance(value, bool)
            and isinstance(value, (int, np.integer)) and value >= 1)


def _check_search(topk, engine: str, ef_search=None) -> None:
    if not _is_positive_int(topk):
        raise ValueError(f'topk must be a positive integer, not {topk!r}')
    if engine not in ('exact', 'faiss'):
        raise ValueError(f'unknown engine {engine!r}: exact or faiss')
    if ef_search is not None:
        if engine != 'faiss':
            raise ValueError('ef_search applies to engine faiss only')
        _check_ef_search(ef_search)


def _check_ef_search(ef_search) -> None:
    if not _is_positive_int(ef_search):
        raise ValueError('ef_search must be a positive integer, not '
                         f'{ef_search!r}')


def top_k_stable(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``scores``, best first, ties in index
    order: ``np.argsort(-scores, kind='stable')[:k]`` without sorting all
    M scores (a partition finds the k-th value, then only the scores at or
    above it are sorted)."""
    if k >= scores.shape[0]:
        return np.argsort(-scores, kind='stable')
    kth = np.partition(scores, scores.shape[0] - k)[scores.shape[0] - k]
    candidates = np.flatnonzero(scores >= kth)  # ascending: ties in order
    return candidates[np.argsort(-scores[candidates], kind='stable')[:k]]


@functools.cache
def blas_pools() -> ThreadpoolController:
    """The BLAS libraries loaded when first asked (numpy's among them, the
    one :func:`exact_scores` runs on); looked up once: a lookup reads every
    loaded library, several milliseconds in a process that holds torch."""
    return ThreadpoolController().select(user_api='blas')


def exact_scores(embeddings: np.ndarray, text: np.ndarray) -> np.ndarray:
    """``embeddings @ text`` ([M, D] x [D] -> [M]) on one BLAS thread.

    numpy's BLAS threads keep spinning for a while after a multi-threaded
    product and take the cores from torch's threads encoding the next
    query; a matrix-vector product is bound by memory, so one thread reads
    the index nearly as fast (figures: the README's search section).
    """
    with blas_pools().limit(limits=1):
        return embeddings @ text


def search_index(model: torch.nn.Module, cfg: Config, index: VideoIndex,
                 query: str, topk: int = 10, engine: str = 'exact',
                 index_dir: str | Path | None = None,
                 ef_search: int | None = None) -> list[dict]:
    """The ``topk`` videos by cosine similarity to ``query``, best first, as
    ``{path, score}`` (path relative to the video folder).

    The query is checked by :func:`~.encode.check_query` (errors for an
    empty or unreadable query, a ``QueryWarning`` naming unknown words).
    ``engine='exact'`` is one matrix product. ``engine='faiss'`` searches an
    approximate HNSW graph (the ``faiss-cpu`` extra), for indexes too large
    for exact search; with ``index_dir`` the graph is cached there as
    ``faiss-<embeddings file>.index`` (faiss' own binary format, no pickle)
    and rebuilt whenever the embeddings change; ``ef_search`` (faiss only)
    trades speed for recall, see :func:`faiss_graph`. The query is encoded
    by :func:`~.encode.encode_query` and ranked by :func:`search_embedding`.
    """
    _check_search(topk, engine, ef_search)
    text = encode_query(model, cfg, query)  # [D]
    return search_embedding(index, text, topk, engine, index_dir,
                            ef_search=ef_search)


def search_embedding(index: VideoIndex, text: np.ndarray, topk: int = 10,
                     engine: str = 'exact',
                     index_dir: str | Path | None = None,
                     graph=None, ef_search: int | None = None) -> list[dict]:
    """The ranking half of :func:`search_index`: the ``topk`` videos by
    inner product with ``text``, a float32 [D] unit vector (an
    :func:`~.encode.encode_query` output), best first, as ``{path,
    score}``. ``graph``: for ``engine='faiss'``, a :func:`faiss_graph` of
    ``index`` to search; without it the graph is built, or read from
    ``index_dir``'s cache, on every call. ``ef_search``: the graph search's
    candidate list for this query (default: the graph's own setting)."""
    _check_search(topk, engine, ef_search)
    if index.embeddings.shape[0] == 0:
        return []
    if engine == 'exact':
        scores = exact_scores(index.embeddings, text)  # [M]
        order = top_k_stable(scores, topk)
        return [dict(path=index.videos[i]['path'], score=float(scores[i]))
                for i in order]
    if graph is None:
        graph = faiss_graph(index, index_dir)
    import faiss
    params = (None if ef_search is None else
              faiss.SearchParametersHNSW(efSearch=int(ef_search)))
    scores, rows = graph.search(text[None].astype(np.float32),
                                min(topk, len(index.videos)), params=params)
    return [dict(path=index.videos[i]['path'], score=float(score))
            for i, score in zip(rows[0], scores[0], strict=True) if i >= 0]


def faiss_graph(index: VideoIndex, index_dir: str | Path | None = None,
                neighbours: int = 32, ef_search: int | None = None):
    """An HNSW inner-product graph over the index's embeddings, loaded from
    or cached in ``index_dir`` when given.

    ``neighbours`` links per vector and faiss' default construction depth
    (efConstruction 40) fix the graph; ``ef_search``, the candidates a
    search keeps (None: ``EF_SEARCH``), sets its default recall and time
    (higher: better recall, slower). How much recall a setting gets
    depends on the embeddings: clustered ones reach nearly all true top 10
    at the default, random high-dimensional ones far fewer (the README's
    search figures).
    """
    ef_search = EF_SEARCH if ef_search is None else ef_search
    _check_ef_search(ef_search)
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
