"""Draw text-to-video retrieval results from a ``tools/test.py --dump`` pickle.

One PNG per text query: the caption on top, then one row per top-k video with
a strip of evenly spaced frames, its rank and score; the ground-truth video has
a green border and a ``GT`` label, and gets an extra row below the top-k when
it is not among them. An overview PNG shows each query's top-1 frame with a
green (hit) or red (miss) border. Only Pillow and PyAV (the data pipeline's
reader) are used, so no plotting library is needed. A video that cannot be
read is drawn as a grey placeholder with a warning, so one bad file never
stops the whole run.
"""
import os.path as osp
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from mmclip4clip.datasets.transforms.loading import VideoFrames

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


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=14)


def load_dump(path: str | Path) -> dict:
    """Load a dump pickle and check the keys and shapes this module uses."""
    with open(path, 'rb') as f:
        dump = pickle.load(f)
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
    return dict(dump, scores=scores, text_video_index=index)


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
    A missing or unreadable video warns and gives grey placeholders.
    """
    try:
        with VideoFrames(path, num_threads=1) as reader:
            length = len(reader)
            if length == 0:
                raise ValueError('no frames')
            idx = ((np.arange(num_frames) + 0.5) * length /
                   num_frames).astype(int)
            frames = reader.get(np.minimum(idx, length - 1))
    except Exception as err:  # noqa: BLE001 -- any decode failure is drawn
        warnings.warn(f'cannot read video {path!r} ({err}); drawing a '
                      'placeholder', stacklevel=2)
        return [_placeholder('missing')] * num_frames
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


class _FrameCache:
    """Frames per video path, read once (so a missing video warns once)."""

    def __init__(self, num_frames: int) -> None:
        self.num_frames = num_frames
        self._frames: dict[str, list[Image.Image]] = {}

    def __call__(self, path: str) -> list[Image.Image]:
        if path not in self._frames:
            self._frames[path] = read_frames(path, self.num_frames)
        return self._frames[path]


def render_query(caption: str, row: np.ndarray, gt: int,
                 video_paths: Sequence[str], topk: int,
                 frames: _FrameCache) -> Image.Image:
    """The picture of one query: caption, top-k rows, GT row if missed."""
    ranks = ranks_of(row)
    top = list(np.argsort(-row, kind='stable')[:topk])
    rows = top + ([gt] if gt not in top else [])
    size = query_image_size(len(rows), frames.num_frames)
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
                 osp.basename(str(video_paths[video]))[:18]]
        if is_gt:
            label.append('GT' if video in top else 'GT (not in top-k)')
        for line_no, line in enumerate(label):
            draw.text((PAD, y + BORDER + line_no * LINE_H), line,
                      fill=GT_COLOUR if is_gt and line.startswith('GT')
                      else TEXT_COLOUR, font=font)
        draw.rectangle([x, y, x + _strip_width(frames.num_frames) - 1,
                        y + THUMB_H + 2 * BORDER - 1],
                       fill=GT_COLOUR if is_gt else ROW_COLOUR)
        for i, thumb in enumerate(frames(str(video_paths[video]))):
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


def visualize_retrieval(dump: dict, out_dir: str | Path,
                        query_ids: Sequence[int],
                        video_root: str | None = None, topk: int = 5,
                        num_frames: int = 4) -> list[Path]:
    """Write ``query_{id}.png`` per query and ``overview.png``; return paths.

    ``video_ids`` of the dump are the video paths relative to the data
    prefix; ``video_root`` is joined in front of them.
    """
    if topk < 1 or num_frames < 1:
        raise ValueError(f'topk and frames must be >= 1, got {topk}, '
                         f'{num_frames}')
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores, index = dump['scores'], dump['text_video_index']
    paths = [osp.join(video_root, str(v)) if video_root else str(v)
             for v in dump['video_ids']]
    frames = _FrameCache(num_frames)
    written, hits = [], []
    for query in query_ids:
        row, gt = scores[query], int(index[query])
        image = render_query(dump['captions'][query], row, gt, paths,
                             min(topk, len(paths)), frames)
        written.append(out_dir / f'query_{query:05d}.png')
        image.save(written[-1])
        top1 = int(np.argsort(-row, kind='stable')[0])
        hits.append((query, int(ranks_of(row)[gt]),
                     frames(paths[top1])[num_frames // 2]))
    written.append(out_dir / 'overview.png')
    render_overview(hits).save(written[-1])
    return written
