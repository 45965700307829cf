"""Draw text-to-video retrieval results from a ``tools/test.py --dump`` pickle.

One PNG per text query: the caption on top, then one row per top-k video with
a strip of evenly spaced frames, its rank and score; the ground-truth video has
a green border and a ``GT`` label, and gets an extra row below the top-k when
it is not among them. An overview PNG shows each query's top-1 frame with a
green (hit) or red (miss) border. Only Pillow and PyAV (the data pipeline's
reader) are used, so no plotting library is needed.

The videos are found through the dump's ``video_paths`` (the files the test
dataset read). Every video to draw is read before any PNG is written, and a
video that is missing or cannot be read is an error naming it, unless
``allow_missing`` draws it as a labelled grey placeholder with a warning.
"""
import os.path as osp
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from mmclip4clip.datasets.transforms.loading import VideoFrames
from mmclip4clip.utils import atomic_path

# Layout constants (pixels); query_image_size derives the image size from them.
THUMB_W, THUMB_H = 128, 96  # one frame, letterboxed into this box
GAP = 4  # between frames of a strip
BORDER = 4  # around a strip: green for the ground truth, grey otherwise
PAD = 8  # outer margin and space between rows
LABEL_W = 150  # rank / score / GT text left of a strip
LINE_H = 18  # one line of text
CAPTION_LINES = 2  # caption lines at the top (longer captions are cut)
HEADER_H = PAD + CAPTION_LINES * LINE_H + PAD
OVERVIEW_COLS = 4

GT_COLOUR = (0, 200, 0)
MISS_COLOUR = (220, 0, 0)
ROW_COLOUR = (200, 200, 200)
PLACEHOLDER_COLOUR = (128, 128, 128)
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)

DUMP_KEYS = ('scores', 'text_video_index', 'video_ids', 'captions')
# Names a dump's pickle may refer to: numpy's array, dtype and scalar
# reconstructors (numpy 1 and 2 module names). Anything else is refused.
_DUMP_GLOBALS = frozenset({
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
    *((module, name)
      for module in ('numpy.core.multiarray', 'numpy._core.multiarray')
      for name in ('_reconstruct', 'scalar')),
    *((module, '_frombuffer')
      for module in ('numpy.core.numeric', 'numpy._core.numeric')),
})


class _DumpUnpickler(pickle.Unpickler):
    """Loads arrays, numbers, strings, lists and dicts only, so that a
    pickle naming any other function is refused instead of run."""

    def __init__(self, file, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in _DUMP_GLOBALS:
            raise pickle.UnpicklingError(
                f'{self.source}: refusing to load {module}.{name}; a dump '
                'holds only numpy arrays, numbers, strings, lists and dicts')
        return super().find_class(module, name)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=14)


def load_dump(path: str | Path) -> dict:
    """Load a dump pickle and check the keys and shapes this module uses."""
    with open(path, 'rb') as f:
        dump = _DumpUnpickler(f, str(path)).load()
    if not isinstance(dump, dict):
        raise ValueError(f'{path}: expected a dict, got {type(dump).__name__}')
    missing = [key for key in DUMP_KEYS if key not in dump]
    if missing:
        raise ValueError(f'{path} is missing keys {missing}')
    scores = np.asarray(dump['scores'], dtype=np.float64)  # [N, M]
    index = np.asarray(dump['text_video_index'], dtype=np.int64)  # [N]
    if scores.ndim != 2 or index.shape != (scores.shape[0], ):
        raise ValueError(f'{path}: scores {scores.shape} and text_video_index '
                         f'{index.shape} do not match')
    if (len(dump['video_ids']) != scores.shape[1]
            or len(dump['captions']) != scores.shape[0]):
        raise ValueError(f'{path}: video_ids/captions do not match the scores')
    if 'video_paths' in dump and len(dump['video_paths']) != scores.shape[1]:
        raise ValueError(f'{path}: {len(dump["video_paths"])} video_paths '
                         f'for {scores.shape[1]} videos')
    return dict(dump, scores=scores, text_video_index=index)


def resolve_video_paths(dump: dict, video_root: str | None = None
                        ) -> list[str]:
    """The file of every dumped video.

    A dump's ``video_paths`` are the files the test dataset read (data
    prefix + annotation path), relative to the folder ``tools/test.py`` ran
    in unless absolute; ``video_root`` replaces that folder for relative ones
    (a dump made elsewhere). A dump without ``video_paths`` (written before
    they were recorded) needs ``video_root``: the data prefix its
    ``video_ids`` are paths under, which they are only when the annotations
    gave no ``video_id``.
    """
    if 'video_paths' in dump:
        return [osp.join(video_root, str(path)) if video_root else str(path)
                for path in dump['video_paths']]
    if not video_root:
        raise ValueError(
            "the dump has no 'video_paths' (it was written before "
            'tools/test.py recorded them), so where its videos are is '
            'unknown: pass --video-root DIR, the data prefix its video_ids '
            'are paths under, or dump it again with tools/test.py --dump')
    return [osp.join(video_root, str(video)) for video in dump['video_ids']]


def select_queries(num_texts: int, num: int | None = None,
                   ids: Sequence[int] | None = None, seed: int = 0) -> list[int]:
    """The given query ids (checked), or ``num`` random distinct ones."""
    if ids is not None:
        bad = [i for i in ids if not 0 <= i < num_texts]
        if bad:
            raise ValueError(f'query ids {bad} outside [0, {num_texts})')
        return list(ids)
    num = min(num if num is not None else 8, num_texts)
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(num_texts, num, replace=False))


def _placeholder(text: str) -> Image.Image:
    image = Image.new('RGB', (THUMB_W, THUMB_H), PLACEHOLDER_COLOUR)
    ImageDraw.Draw(image).text((4, 4), text, fill=BACKGROUND, font=_font())
    return image


def read_frames(path: str, num_frames: int) -> list[Image.Image]:
    """``num_frames`` frames evenly spaced over the video, as thumbnails.

    Each frame is scaled (up or down) to fit THUMB_W x THUMB_H, on black.
    Frame ``i`` is the middle of the ``i``-th of ``num_frames`` equal segments.
    A video that cannot be read raises a ``RuntimeError`` naming it.
    """
    try:
        with VideoFrames(path, num_threads=1) as reader:
            length = len(reader)
            if length == 0:
                raise ValueError('no frames')
            idx = ((np.arange(num_frames) + 0.5) * length /
                   num_frames).astype(int)
            frames = reader.get(np.minimum(idx, length - 1))
    except Exception as err:
        raise RuntimeError(f'cannot read video {path}: '
                           f'{type(err).__name__}: {err}') from err
    thumbs = []
    for frame in frames:  # [H, W, 3] uint8
        image = ImageOps.contain(Image.fromarray(frame), (THUMB_W, THUMB_H))
        box = Image.new('RGB', (THUMB_W, THUMB_H), (0, 0, 0))
        box.paste(image, ((THUMB_W - image.width) // 2,
                          (THUMB_H - image.height) // 2))
        thumbs.append(box)
    return thumbs


def _strip_width(num_frames: int) -> int:
    return num_frames * THUMB_W + (num_frames - 1) * GAP + 2 * BORDER


def query_image_size(num_rows: int, num_frames: int) -> tuple[int, int]:
    """(width, height) of a query image with ``num_rows`` video rows."""
    width = PAD + LABEL_W + _strip_width(num_frames) + PAD
    height = HEADER_H + num_rows * (THUMB_H + 2 * BORDER + PAD)
    return width, height


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: int,
          font: ImageFont.ImageFont) -> list[str]:
    """Greedy word wrap to ``width`` pixels, cut to CAPTION_LINES lines."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f'{lines[-1]} {word}', font=font) <= width:
            lines[-1] = f'{lines[-1]} {word}'
        else:
            lines.append(word)
    if len(lines) > CAPTION_LINES:
        lines = lines[:CAPTION_LINES]
        while lines[-1] and draw.textlength(f'{lines[-1]}...',
                                            font=font) > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += '...'
    return lines


def ranks_of(row: np.ndarray) -> np.ndarray:
    """Rank of every candidate, ``1 + #{strictly higher}`` as in the metric."""
    order = np.sort(row)[::-1]  # descending
    return 1 + np.searchsorted(-order, -row, side='left')


def query_rows(row: np.ndarray, gt: int, topk: int) -> tuple[list[int],
                                                             list[int]]:
    """(top-k videos best first, the rows to draw: top-k then the GT if it
    is not among them)."""
    top = [int(v) for v in np.argsort(-row, kind='stable')[:topk]]
    return top, top + ([gt] if gt not in top else [])


def read_all_frames(paths: Sequence[str], videos: Sequence[int],
                    num_frames: int, allow_missing: bool = False,
                    hint: str = '') -> dict[int, list[Image.Image]]:
    """Thumbnails of ``videos`` (columns of the dump), read before anything
    is drawn so that a bad video stops the run before any file is written.

    A missing or unreadable video is an error naming its file (``hint``
    appended to the missing-file message); with ``allow_missing`` it is a
    grey placeholder saying ``missing`` or ``unreadable``, with a warning
    naming every such file.
    """
    missing = [v for v in videos if not osp.isfile(paths[v])]
    if missing:
        listed = ', '.join(paths[v] for v in missing[:5])
        more = f' and {len(missing) - 5} more' if len(missing) > 5 else ''
        message = (f'{len(missing)} of the {len(videos)} videos to draw do '
                   f'not exist: {listed}{more}')
        if not allow_missing:
            raise FileNotFoundError(f'{message}. {hint}'.strip())
        warnings.warn(f'{message}; drawing them as grey placeholders',
                      stacklevel=2)
    frames = {v: [_placeholder('missing')] * num_frames for v in missing}
    for video in videos:
        if video in frames:
            continue
        try:
            frames[video] = read_frames(paths[video], num_frames)
        except RuntimeError as err:
            if not allow_missing:
                raise
            warnings.warn(f'{err}; drawing a grey placeholder', stacklevel=2)
            frames[video] = [_placeholder('unreadable')] * num_frames
    return frames


def render_query(caption: str, row: np.ndarray, gt: int,
                 labels: Sequence[str], topk: int,
                 frames: Mapping[int, list[Image.Image]]) -> Image.Image:
    """The picture of one query: caption, top-k rows, GT row if missed.

    ``labels`` name the videos (columns of ``row``); ``frames`` holds the
    thumbnails of every video drawn.
    """
    ranks = ranks_of(row)
    top, rows = query_rows(row, gt, topk)
    num_frames = len(frames[rows[0]])
    size = query_image_size(len(rows), num_frames)
    image = Image.new('RGB', size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font()
    for line_no, line in enumerate(_wrap(draw, caption, size[0] - 2 * PAD,
                                         font)):
        draw.text((PAD, PAD + line_no * LINE_H), line, fill=TEXT_COLOUR,
                  font=font)
    for row_no, video in enumerate(rows):
        y = HEADER_H + row_no * (THUMB_H + 2 * BORDER + PAD)
        x = PAD + LABEL_W
        is_gt = video == gt
        label = [f'#{ranks[video]}  score {row[video]:.3f}',
                 osp.basename(str(labels[video]))[:18]]
        if is_gt:
            label.append('GT' if video in top else 'GT (not in top-k)')
        for line_no, line in enumerate(label):
            draw.text((PAD, y + BORDER + line_no * LINE_H), line,
                      fill=GT_COLOUR if is_gt and line.startswith('GT')
                      else TEXT_COLOUR, font=font)
        draw.rectangle([x, y, x + _strip_width(num_frames) - 1,
                        y + THUMB_H + 2 * BORDER - 1],
                       fill=GT_COLOUR if is_gt else ROW_COLOUR)
        for i, thumb in enumerate(frames[video]):
            image.paste(thumb, (x + BORDER + i * (THUMB_W + GAP), y + BORDER))
    return image


def overview_image_size(num_queries: int) -> tuple[int, int]:
    """(width, height) of the overview grid of ``num_queries`` cells."""
    cols = min(num_queries, OVERVIEW_COLS)
    rows = -(-num_queries // OVERVIEW_COLS)
    cell_w, cell_h = THUMB_W + 2 * BORDER, THUMB_H + 2 * BORDER + LINE_H
    return PAD + cols * (cell_w + PAD), PAD + rows * (cell_h + PAD)


def render_overview(hits: Sequence[tuple[int, int, Image.Image]]) -> Image.Image:
    """Grid of (query id, GT rank, top-1 thumbnail): green hit, red miss."""
    image = Image.new('RGB', overview_image_size(len(hits)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell_w, cell_h = THUMB_W + 2 * BORDER, THUMB_H + 2 * BORDER + LINE_H
    for n, (query, rank, thumb) in enumerate(hits):
        x = PAD + (n % OVERVIEW_COLS) * (cell_w + PAD)
        y = PAD + (n // OVERVIEW_COLS) * (cell_h + PAD)
        colour = GT_COLOUR if rank == 1 else MISS_COLOUR
        draw.rectangle([x, y, x + cell_w - 1, y + THUMB_H + 2 * BORDER - 1],
                       fill=colour)
        image.paste(thumb, (x + BORDER, y + BORDER))
        draw.text((x, y + THUMB_H + 2 * BORDER),
                  f'q{query}: {"hit" if rank == 1 else "miss"}, GT #{rank}',
                  fill=colour, font=_font())
    return image


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format='PNG')


def visualize_retrieval(dump: dict, out_dir: str | Path,
                        query_ids: Sequence[int],
                        video_root: str | None = None, topk: int = 5,
                        num_frames: int = 4,
                        allow_missing: bool = False) -> list[Path]:
    """Write ``query_{id}.png`` per query and ``overview.png``; return paths.

    The videos are found by :func:`resolve_video_paths` (``video_root``
    re-roots relative paths, or locates the videos of an older dump). A
    missing or unreadable video is an error naming it, raised before any
    file is written, unless ``allow_missing`` draws it as a placeholder.
    """
    if topk < 1 or num_frames < 1:
        raise ValueError(f'topk and frames must be >= 1, got {topk}, '
                         f'{num_frames}')
    paths = resolve_video_paths(dump, video_root)
    scores, index = dump['scores'], dump['text_video_index']
    topk = min(topk, len(paths))
    rows = {query: query_rows(scores[query], int(index[query]), topk)[1]
            for query in query_ids}
    if 'video_paths' in dump:
        hint = ('Relative video_paths are under the folder tools/test.py '
                'ran in: run from there or pass --video-root THAT_FOLDER; '
                '--allow-missing draws missing videos as grey placeholders.')
    else:
        hint = ("This dump has no 'video_paths', so they are --video-root "
                'joined with its video_ids, which are file paths only when '
                'the annotations gave no video_id (the prepared benchmarks '
                'give ids such as video7010): dump it again with '
                'tools/test.py --dump.')
    frames = read_all_frames(paths, sorted({v for r in rows.values()
                                             for v in r}),
                             num_frames, allow_missing, hint)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, hits = [], []
    for query, drawn in rows.items():
        row, gt = scores[query], int(index[query])
        image = render_query(dump['captions'][query], row, gt,
                             dump['video_ids'], topk, frames)
        written.append(out_dir / f'query_{query:05d}.png')
        _save_png(image, written[-1])
        hits.append((query, int(ranks_of(row)[gt]),
                     frames[drawn[0]][num_frames // 2]))
    written.append(out_dir / 'overview.png')
    _save_png(render_overview(hits), written[-1])
    return written
