"""Search a video index from a browser: a FastAPI app over
:func:`~.index.search_index`.

Routes (``create_app`` builds them; ``tools/search_server.py`` serves them)::

    GET /                   the search page (static HTML: no data in it)
    GET /static/app.js      the page's script (fetches /api/search, builds
                            the result list with textContent)
    GET /static/app.css     its style sheet
    GET /api/search?q=&k=   JSON ranking: {query, k, results, warnings}
    GET /api/thumb/{row}    JPEG strip of frames of the row-th indexed video
    GET /video/{row}        the row-th indexed video file (byte ranges)

Safety: the model, tokenizer and index are loaded once, at start. Requests
whose ``Host`` is not one of ``allowed_hosts`` (by default this machine's
loopback names) are answered 400, so a web page whose domain is rebound to
127.0.0.1 (DNS rebinding) cannot read the API or the videos. Files are
named by their row in the index, never by a path from the request, and a
listed file that now resolves outside the index's video folder (a swapped
in symlink) is answered 404. Queries are bounded in length, ``k`` in
1..:data:`MAX_K`; one query is encoded at a time (torch already spreads one
encode over every core) with at most ``max_waiting`` more waiting, beyond
which a query is answered 503 at once; at most
:data:`MAX_CONCURRENT_THUMBNAILS` thumbnails are decoded at once (the others
wait). Every response carries
``X-Content-Type-Options: nosniff`` and a Content-Security-Policy allowing
only this server's own script, style, images and media.
"""
from __future__ import annotations

import io
import logging
import math
import re
import threading
import warnings
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

from mmengine.config import Config

from .encode import QueryWarning, encode_query
from .index import (
    faiss_graph,
    load_index,
    model_fingerprint,
    rerank_with_tight,
    search_embedding,
)
from .inference import init_retriever

logger = logging.getLogger(__name__)

MAX_QUERY_CHARS = 500
MAX_K = 100
DEFAULT_K = 10
# Frames in a result's thumbnail strip, and their height in pixels.
STRIP_FRAMES = 4
STRIP_HEIGHT = 72
# Thumbnail strips decoded at once (more requests wait their turn).
MAX_CONCURRENT_THUMBNAILS = 2
_ROW = re.compile(r'[0-9]{1,12}')
# The Host names a browser on this machine uses for a loopback server.
LOOPBACK_HOSTS = ('127.0.0.1', 'localhost', '[::1]')

SECURITY_HEADERS = {
    'X-Content-Type-Options': 'nosniff',
    'Content-Security-Policy': (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        "img-src 'self'; media-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    'Referrer-Policy': 'no-referrer',
    'X-Frame-Options': 'DENY',
}


class SearchRefused(Exception):
    """A query answered with an error: ``status`` and a ``message`` saying
    why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath('web_static', name) \
        .read_bytes()


class VideoSearcher:
    """An index and its model, loaded once; answers queries with a bounded
    number of concurrent encodes.

    ``config`` and ``checkpoint`` default to those the index was built with
    (an index built by another model is refused, as tools/search.py does).
    With ``rerank_config`` and ``rerank_checkpoint`` (a tightTransf model),
    the loose top ``max(rerank_topk, k)`` are re-ordered by its pair logits
    and each result gains ``tight_score``, as ``tools/search.py
    --rerank-config`` does. ``ef_search``: the faiss graph's search depth
    (engine faiss only; see :func:`~.index.faiss_graph`).
    """

    def __init__(self, index_path: str | Path, config: str | None = None,
                 checkpoint: str | None = None, device: str = 'cpu',
                 engine: str = 'exact', max_waiting: int = 8,
                 rerank_config: str | None = None,
                 rerank_checkpoint: str | None = None,
                 rerank_topk: int = 50, ef_search: int | None = None):
        if max_waiting < 0:
            raise ValueError(f'max_waiting must be >= 0, not {max_waiting}')
        if (rerank_config is None) != (rerank_checkpoint is None):
            # A tight head without its weights would re-rank at random.
            raise ValueError('rerank_config and rerank_checkpoint go '
                             'together')
        if rerank_topk < 1:
            raise ValueError(f'rerank_topk must be >= 1, not {rerank_topk}')
        if engine not in ('exact', 'faiss'):
            raise ValueError(f'unknown engine {engine!r}: exact or faiss')
        if ef_search is not None and engine != 'faiss':
            raise ValueError('ef_search applies to engine faiss only')
        self.index_path = Path(index_path)
        self.index = load_index(self.index_path)
        config = config or self.index.meta['config']
        checkpoint = checkpoint or self.index.meta['checkpoint']
        self.cfg = Config.fromfile(config)
        if model_fingerprint(self.cfg, checkpoint) != \
                self.index.meta['fingerprint']:
            raise ValueError(f'{self.index_path} was built with another '
                             'model, checkpoint or video pipeline')
        self.model = init_retriever(self.cfg, checkpoint, device=device)
        self.tight_cfg = self.tight_model = None
        if rerank_config is not None:
            self.tight_cfg = Config.fromfile(rerank_config)
            self.tight_model = init_retriever(self.tight_cfg,
                                              rerank_checkpoint,
                                              device=device)
        self.rerank_topk = rerank_topk
        self.engine = engine
        # The faiss graph is built (or read from its cache) once, now: a
        # missing faiss-cpu fails at start, and no query reads it again.
        self.graph = (faiss_graph(self.index, self.index_path,
                                  ef_search=ef_search)
                      if engine == 'faiss' else None)
        self.video_dir = Path(self.index.meta['video_dir']).resolve()
        self.row_of = {v['path']: i for i, v in enumerate(self.index.videos)}
        # One encode at a time; the admission semaphore bounds how many
        # requests hold a thread waiting for it (the rest get 503).
        self._encode_lock = threading.Lock()
        self._admitted = threading.BoundedSemaphore(max_waiting + 1)
        self._thumbnail_slots = threading.BoundedSemaphore(
            MAX_CONCURRENT_THUMBNAILS)

    def search(self, query: str, k: int) -> dict:
        """``{query, k, results, warnings}`` for a checked query; raises
        :class:`SearchRefused` for a query that cannot be answered."""
        if not query.strip():
            raise SearchRefused(400, 'the query is empty: type some words '
                                'to search for')
        if len(query) > MAX_QUERY_CHARS:
            raise SearchRefused(400, f'the query is {len(query)} characters '
                                f'long; at most {MAX_QUERY_CHARS} are '
                                'accepted')
        if not 1 <= k <= MAX_K:
            raise SearchRefused(400, f'k must be between 1 and {MAX_K}, '
                                f'not {k}')
        if not self._admitted.acquire(blocking=False):
            raise SearchRefused(503, 'the server is busy with other '
                                'queries; try again in a moment')
        try:
            with self._encode_lock, warnings.catch_warnings(record=True) \
                    as caught:
                # catch_warnings is process-wide: it is only entered under
                # the encode lock, and only QueryWarnings are kept.
                warnings.simplefilter('always', QueryWarning)
                try:
                    hits = self._ranking(query, k)
                except ValueError as err:
                    raise SearchRefused(400, str(err)) from None
        finally:
            self._admitted.release()
        results = []
        for rank, hit in enumerate(hits, 1):
            row = self.row_of[hit['path']]
            video = self.index.videos[row]
            result = dict(rank=rank, id=row, path=hit['path'],
                          score=hit['score'], duration=video['duration'])
            if 'tight_score' in hit:
                result['tight_score'] = hit['tight_score']
            result.update(_optional_fields(video))
            results.append(result)
        messages = [str(w.message) for w in caught
                    if issubclass(w.category, QueryWarning)]
        return dict(query=query, k=k, results=results, warnings=messages)

    def _ranking(self, query: str, k: int) -> list[dict]:
        """search_index's top ``k`` (the faiss graph held, not read per
        query), re-ranked when a tight model is loaded."""
        text = encode_query(self.model, self.cfg, query)  # [D]
        if self.tight_model is None:
            return search_embedding(self.index, text, k, self.engine,
                                    graph=self.graph)
        shortlist = search_embedding(self.index, text,
                                     max(self.rerank_topk, k), self.engine,
                                     graph=self.graph)
        return rerank_with_tight(shortlist, self.tight_model, self.tight_cfg,
                                 self.index.meta['video_dir'], query)[:k]

    def video_file(self, row: str) -> Path | None:
        """The file of index row ``row`` (a string of digits from the URL),
        or None when there is no such row, the file is gone, or it now
        resolves outside the video folder."""
        if not _ROW.fullmatch(row) or int(row) >= len(self.index.videos):
            return None
        listed = self.video_dir / self.index.videos[int(row)]['path']
        try:
            real = listed.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            return None
        if not real.is_relative_to(self.video_dir) or not real.is_file():
            return None
        return real

    def thumbnail(self, row: str) -> bytes | None:
        """A JPEG strip of :data:`STRIP_FRAMES` frames of row ``row``, or
        None when the file cannot be served or decoded."""
        path = self.video_file(row)
        if path is None:
            return None
        stat = path.stat()
        with self._thumbnail_slots:
            return _frame_strip(str(path), stat.st_size, stat.st_mtime_ns)


def _optional_fields(video: dict) -> dict:
    """A segment (``start``, ``end`` in seconds, both numbers, start <
    end) and a ``caption`` (a string) when the index record has them; the
    page then plays the segment (``#t=start,end``) and shows the caption.
    Today's indexes have neither; anything malformed is left out."""
    fields = {}
    start, end = video.get('start'), video.get('end')
    if (all(isinstance(t, (int, float)) and not isinstance(t, bool)
            and math.isfinite(t) for t in (start, end)) and start < end):
        fields.update(start=start, end=end)
    if isinstance(video.get('caption'), str):
        fields['caption'] = video['caption']
    return fields


@lru_cache(maxsize=512)
def _frame_strip(path: str, size: int, mtime_ns: int) -> bytes | None:
    """Frames at 1/8, 3/8, 5/8 and 7/8 of the video side by side, as JPEG
    (``size`` and ``mtime_ns`` key the cache: a changed file is redrawn)."""
    import av
    from PIL import Image

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            duration = (float(stream.duration * stream.time_base)
                        if stream.duration else
                        (container.duration or 0) / av.time_base)
            frames = []
            for i in range(STRIP_FRAMES):
                at = duration * (2 * i + 1) / (2 * STRIP_FRAMES)
                container.seek(int(at / stream.time_base), stream=stream,
                               backward=True, any_frame=False)
                frame = None
                for frame in container.decode(stream):
                    if frame.time is None or frame.time >= at:
                        break
                if frame is not None:
                    frames.append(frame.to_image())
    except (av.error.FFmpegError, OSError, ValueError, IndexError):
        return None
    if not frames:
        return None
    scaled = [im.resize((max(1, round(im.width * STRIP_HEIGHT / im.height)),
                         STRIP_HEIGHT)) for im in frames]
    strip = Image.new('RGB', (sum(im.width for im in scaled), STRIP_HEIGHT))
    x = 0
    for im in scaled:
        strip.paste(im, (x, 0))
        x += im.width
    out = io.BytesIO()
    strip.save(out, format='JPEG', quality=85)
    return out.getvalue()


def create_app(index_path: str | Path, config: str | None = None,
               checkpoint: str | None = None, device: str = 'cpu',
               engine: str = 'exact', max_waiting: int = 8,
               rerank_config: str | None = None,
               rerank_checkpoint: str | None = None, rerank_topk: int = 50,
               allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
               ef_search: int | None = None):
    """The FastAPI app serving ``index_path`` (see the module docstring;
    ``allowed_hosts`` are the ``Host`` names it answers, ``'*'`` for any,
    the others are :class:`VideoSearcher`'s); the model(s) and index are
    loaded here, once."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    searcher = VideoSearcher(index_path, config, checkpoint, device, engine,
                             max_waiting, rerank_config, rerank_checkpoint,
                             rerank_topk, ef_search)
    page, script, style = (_static(n) for n in ('index.html', 'app.js',
                                                'app.css'))
    app = FastAPI(title='mmclip4clip video search', docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.searcher = searcher
    # Added first, so that the security headers (added next, outermost) are
    # on its refusals too.
    app.add_middleware(TrustedHostMiddleware,
                       allowed_hosts=list(allowed_hosts), www_redirect=False)

    @app.middleware('http')
    async def add_security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get('/')
    def index_page() -> Response:
        return Response(page, media_type='text/html; charset=utf-8')

    @app.get('/static/app.js')
    def app_script() -> Response:
        return Response(script, media_type='text/javascript; charset=utf-8')

    @app.get('/static/app.css')
    def app_style() -> Response:
        return Response(style, media_type='text/css; charset=utf-8')

    # Plain `def` handlers run in the server's thread pool, so a query
    # waiting for the encode lock blocks no other request.
    @app.get('/api/search')
    def api_search(q: str = '', k: str = str(DEFAULT_K)) -> JSONResponse:
        try:
            if not re.fullmatch(r'-?[0-9]{1,6}', k):
                raise SearchRefused(400, f'k must be an integer between 1 '
                                    f'and {MAX_K}, not {k[:20]!r}')
            return JSONResponse(searcher.search(q, int(k)))
        except SearchRefused as err:
            return JSONResponse(dict(error=err.message), err.status)
        except Exception as err:  # the page shows why, the log the trace
            logger.exception('search for %r failed', q)
            return JSONResponse(dict(error=f'the search failed: '
                                     f'{type(err).__name__}: {err}'), 500)

    @app.get('/api/thumb/{row}')
    def api_thumb(row: str) -> Response:
        jpeg = searcher.thumbnail(row)
        if jpeg is None:
            return JSONResponse(dict(error='no such video'), 404)
        return Response(jpeg, media_type='image/jpeg',
                        headers={'Cache-Control': 'max-age=3600'})

    @app.get('/video/{row}')
    def video(row: str) -> Response:
        path = searcher.video_file(row)
        if path is None:
            return JSONResponse(dict(error='no such video'), 404)
        return FileResponse(path)

    return app
