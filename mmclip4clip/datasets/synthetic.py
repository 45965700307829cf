"""Built-in synthetic text-video retrieval dataset.

Each clip shows one coloured shape on a static, varied background. The shape
either moves in a straight line at constant speed (left, right, up or down) or
stays still, and its captions name colour, shape and motion. That gives
6 colours x 3 shapes x 5 motions = 90 caption meanings.

Captions also say where the shape is, in words that survive time reversal:
the row a horizontal mover runs along ("along the top"), the column of a
vertical mover ("along the west"), the cell of a still shape ("at the bottom
centre"). So frame features must encode where the shape is, which is what a
temporal head needs to tell the direction from the order of the frames.

The rendering is built so that a clip played backwards is a valid clip of the
opposite direction: for the same random draws, ``left`` is exactly ``right``
reversed in time (and ``up`` is ``down`` reversed). The set of frames thus
carries no direction, so only a model that looks at the frame order can tell
left from right; a mean-pooling model can at best get colour, shape and
"moving or not".

Layout written by :func:`make_synthetic_dataset`::

    out_dir/videos/{train,test}/<index>_<colour>_<shape>_<motion>.mp4
    out_dir/annotations/{train,test}.json  # [{"video": ..., "captions": [...]}]
    out_dir/tokenizer/                     # Hugging Face word-level tokenizer
    out_dir/meta.json                      # parameters and counts, written last
"""
import itertools
import json
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

from .annotations import read_records

# 4: videos encoded with X264_OPTIONS, the same bytes on every machine.
FORMAT_VERSION = 4

# Bright, saturated shape colours; backgrounds stay below BACKGROUND_MAX in
# every channel so the shape always stands out.
COLOURS: dict[str, tuple[int, int, int]] = {
    'red': (230, 30, 30),
    'green': (30, 200, 50),
    'blue': (40, 90, 255),
    'yellow': (240, 220, 30),
    'purple': (170, 50, 230),
    'white': (245, 245, 245),
}
SHAPES: tuple[str, ...] = ('square', 'circle', 'triangle')
MOTIONS: tuple[str, ...] = ('left', 'right', 'up', 'down', 'still')
COMBINATIONS: tuple[tuple[str, str, str], ...] = tuple(
    itertools.product(COLOURS, SHAPES, MOTIONS))
SPLITS: tuple[str, ...] = ('train', 'test')

BACKGROUND_MAX = 80
# Half-extent of a shape as a fraction of the frame size.
SHAPE_RADIUS_RANGE = (0.12, 0.2)
# Distance travelled by a moving shape as a fraction of the largest distance
# that keeps it fully inside the frame.
TRAVEL_RANGE = (0.6, 1.0)
# A moving shape is drawn with a symmetric motion blur (a long exposure):
# the mean of BLUR_SAMPLES copies spread over BLUR_LENGTH shape radii along
# its path, centred on its position. It shows in every frame whether and
# along which axis the shape moves, but not which way: a symmetric streak
# looks the same played backwards.
BLUR_LENGTH = 1.2
BLUR_SAMPLES = 9

# (axis, direction) of each moving motion; axis 0 is x, 1 is y (image rows
# grow downwards, so "up" is decreasing y).
_MOVES: dict[str, tuple[int, int]] = {
    'left': (0, -1),
    'right': (0, 1),
    'up': (1, -1),
    'down': (1, 1),
}

_MOVING_TEMPLATES: tuple[str, ...] = (
    'a {colour} {shape} moves {direction}',
    'the {colour} {shape} is moving {to_direction}',
    'a {colour} {shape} slides {direction}',
    'a {colour} {shape} travels {to_direction}',
    'the {colour} {shape} goes {direction}',
)
_STILL_TEMPLATES: tuple[str, ...] = (
    'a {colour} {shape} stays still',
    'a {colour} {shape} does not move',
    'the {colour} {shape} is not moving',
    'a {colour} {shape} stays in place',
    'the {colour} {shape} remains still',
)
# Thirds of the frame, top to bottom and west to east; words distinct from the
# direction words.
ROWS: tuple[str, ...] = ('top', 'middle', 'bottom')
COLUMNS: tuple[str, ...] = ('west', 'centre', 'east')
_TO_DIRECTION = {
    'left': 'to the left',
    'right': 'to the right',
    'up': 'up',
    'down': 'down',
}

PAD_TOKEN = '[PAD]'
UNK_TOKEN = '[UNK]'
BOS_TOKEN = '<|startoftext|>'
EOS_TOKEN = '<|endoftext|>'
# Positional limit written into the tokenizer config, as in CLIP.
TOKENIZER_MAX_LENGTH = 77

# Entries a dataset directory may contain; anything else means the directory
# is not ours and must not be replaced.
_DATASET_ENTRIES = frozenset({'videos', 'annotations', 'tokenizer', 'meta.json'})
_TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json')

# libx264 settings under which the encoded bytes depend on the frames alone,
# not on the machine. x264 picks SIMD routines for the CPU it runs on, and
# those of its macroblock-tree rate control round floats differently per
# instruction set (SSE2, AVX2, AVX-512, none), which changes the encoded
# bytes of a third to a half of the clips: 'cpu-independent' makes it use its
# portable routines there. One thread, because x264's frame threads
# change its decisions with their number, which by default follows the
# host's cores.
X264_OPTIONS: dict[str, str] = {
    'crf': '18',
    'x264-params': 'cpu-independent=1:threads=1',
}


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def _upsample_bilinear(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinearly resize a small [g, g, C] grid to [size, size, C]."""
    cells = grid.shape[0]
    pos = (np.arange(size) + 0.5) / size * (cells - 1)
    low = np.clip(np.floor(pos).astype(int), 0, cells - 2)
    weight = pos - low
    rows = (grid[low] * (1 - weight)[:, None, None] +
            grid[low + 1] * weight[:, None, None])
    return (rows[:, low] * (1 - weight)[None, :, None] +
            rows[:, low + 1] * weight[None, :, None])


def _random_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark [size, size, 3] float background: solid, gradient or smooth
    noise, so that the background alone identifies nothing."""
    kind = rng.integers(3)
    if kind == 0:
        background = np.broadcast_to(
            rng.uniform(0, BACKGROUND_MAX, 3), (size, size, 3))
    elif kind == 1:
        start, end = rng.uniform(0, BACKGROUND_MAX, (2, 3))
        angle = rng.uniform(0, 2 * np.pi)
        coords = (np.arange(size) + 0.5) / size - 0.5
        along = (np.cos(angle) * coords[None, :] +
                 np.sin(angle) * coords[:, None])
        along = (along - along.min()) / (along.max() - along.min())
        background = start + (end - start) * along[..., None]
    else:
        grid = rng.uniform(0, BACKGROUND_MAX, (4, 4, 3))
        background = _upsample_bilinear(grid, size)
    return background


def _shape_masks(shape: str, xs: np.ndarray, ys: np.ndarray, radius: float,
                 size: int) -> np.ndarray:
    """Boolean [F, size, size] masks of ``shape`` centred at (xs[t], ys[t]),
    testing pixel centres (no anti-aliasing)."""
    coords = np.arange(size) + 0.5
    dx = coords[None, None, :] - xs[:, None, None]
    dy = coords[None, :, None] - ys[:, None, None]
    if shape == 'square':
        return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    if shape == 'circle':
        return dx**2 + dy**2 <= radius**2
    # Upright isosceles triangle: apex at the top, base as wide as it is tall.
    return (dy <= radius) & (np.abs(dx) <= (dy + radius) / 2)


def place_words(motion: str, centre_x: float, centre_y: float,
                size: int) -> str:
    """Where a clip's shape is, from its mean centre: the row of a
    horizontal mover, the column of a vertical one, both for a still one."""
    row = ROWS[min(int(3 * centre_y / size), 2)]
    column = COLUMNS[min(int(3 * centre_x / size), 2)]
    if motion == 'still':
        return f'at the {row} {column}'
    return f'along the {row if _MOVES[motion][0] == 0 else column}'


def render_clip_and_place(colour: str,
                          shape: str,
                          motion: str,
                          rng: np.random.Generator,
                          size: int = 64,
                          num_frames: int = 40) -> tuple[np.ndarray, str]:
    """Render one clip as a [num_frames, size, size, 3] uint8 RGB array,
    with the words saying where its shape is (:func:`place_words`).

    A moving shape covers 60-100% of the room it has, at constant speed, from
    a random start and at a random perpendicular offset, with a symmetric
    motion blur along its path; a still one sits, sharp, at a random position
    and every frame is identical. The random draws do not
    depend on the direction, so for equal generator states ``left`` is
    ``right[::-1]`` and ``up`` is ``down[::-1]`` exactly.
    """
    if colour not in COLOURS:
        raise ValueError(f'unknown colour {colour!r}, expected one of '
                         f'{list(COLOURS)}')
    if shape not in SHAPES:
        raise ValueError(f'unknown shape {shape!r}, expected one of {SHAPES}')
    if motion not in MOTIONS:
        raise ValueError(f'unknown motion {motion!r}, expected one of '
                         f'{MOTIONS}')
    if size < 16:
        raise ValueError(f'size must be at least 16, got {size}')
    if num_frames < 2:
        raise ValueError(f'num_frames must be at least 2, got {num_frames}')

    background = _random_background(rng, size)
    radius = rng.uniform(*SHAPE_RADIUS_RANGE) * size
    # Shape centres in [low, high] keep the whole shape inside the frame.
    low, high = radius, size - radius
    travel = rng.uniform(*TRAVEL_RANGE) * (high - low)
    start = rng.uniform(low, high - travel)
    across = rng.uniform(low, high)

    fixed = np.full(num_frames, across)
    if motion == 'still':
        xs, ys = np.full(num_frames, rng.uniform(low, high)), fixed
        coverage = _shape_masks(shape, xs, ys, radius, size).astype(float)
        centre = (xs[0], ys[0])
    else:
        axis, direction = _MOVES[motion]
        along = np.linspace(start, start + travel, num_frames)
        if direction < 0:
            along = along[::-1]
        middle = start + travel / 2
        centre = (middle, across) if axis == 0 else (across, middle)
        # Fraction of the exposure during which each pixel shows the shape.
        offsets = np.linspace(-0.5, 0.5, BLUR_SAMPLES) * BLUR_LENGTH * radius
        coverage = np.zeros((num_frames, size, size))
        for offset in offsets:
            shifted = along + offset
            xs, ys = (shifted, fixed) if axis == 0 else (fixed, shifted)
            coverage += _shape_masks(shape, xs, ys, radius, size)
        coverage /= BLUR_SAMPLES

    alpha = coverage[..., None]  # [F, size, size, 1]
    colour_rgb = np.asarray(COLOURS[colour], dtype=np.float64)
    frames = alpha * colour_rgb + (1 - alpha) * background[None]
    return (np.round(frames).astype(np.uint8),
            place_words(motion, *centre, size))


def write_mp4(frames: np.ndarray, path: str | Path, fps: int) -> None:
    """Encode [F, H, W, 3] uint8 RGB frames as H.264 (yuv420p, crf 18) mp4.

    crf 18 keeps the shape colours close to the rendered ones; H and W must be
    even because yuv420p halves the chroma resolution. With the same PyAV
    build the file is the same, byte for byte, on any machine
    (:data:`X264_OPTIONS`).
    """
    import av  # only needed to write the dataset, not to read it

    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError('frames must be a uint8 array of shape [F, H, W, 3], '
                         f'got {frames.dtype} {frames.shape}')
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f'frame size must be even, got {width}x{height}')
    with av.open(str(path), mode='w') as container:
        stream = container.add_stream(
            'libx264', rate=Fraction(fps), options=dict(X264_OPTIONS))
        stream.width, stream.height = width, height
        stream.pix_fmt = 'yuv420p'
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(frame, format='rgb24')
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())  # flush delayed frames


# --------------------------------------------------------------------------
# Captions and tokenizer
# --------------------------------------------------------------------------


def captions_for(colour: str, shape: str, motion: str,
                 rng: np.random.Generator, k: int,
                 place: str | None = None) -> list[str]:
    """``k`` distinct lowercase captions naming colour, shape and motion,
    each from a different template chosen at random, followed by ``place``
    (:func:`place_words`) when given."""
    templates = _STILL_TEMPLATES if motion == 'still' else _MOVING_TEMPLATES
    if not 1 <= k <= len(templates):
        raise ValueError(f'k must be between 1 and {len(templates)}, got {k}')
    words = {
        'colour': colour,
        'shape': shape,
        'direction': motion,
        'to_direction': _TO_DIRECTION.get(motion),
    }
    chosen = rng.choice(len(templates), size=k, replace=False)
    suffix = f' {place}' if place else ''
    return [templates[i].format(**words) + suffix for i in chosen]


def _word_level_tokenizer(words: list[str]):
    """A ``tokenizers.Tokenizer`` with ids [PAD]=0, [UNK]=1, the words, then
    BOS and EOS, so that EOS has the largest id as in CLIP (whose text feature
    is read at argmax of the ids)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tokens = [PAD_TOKEN, UNK_TOKEN, *words, BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    # Like CLIP's tokenizer, add BOS/EOS unless add_special_tokens=False.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f'{BOS_TOKEN} $A {EOS_TOKEN}',
        special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN]),
                        (EOS_TOKEN, vocab[EOS_TOKEN])])
    return tokenizer


def build_tokenizer(captions: list[str], out_dir: str | Path) -> int:
    """Save a word-level tokenizer covering ``captions`` in Hugging Face
    format to ``out_dir``; return its vocabulary size."""
    from transformers import PreTrainedTokenizerFast

    splitter = _word_level_tokenizer([])
    words = sorted({
        word
        for caption in captions
        for word, _ in splitter.pre_tokenizer.pre_tokenize_str(
            splitter.normalizer.normalize_str(caption))
    })
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_word_level_tokenizer(words),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=TOKENIZER_MAX_LENGTH)
    tokenizer.save_pretrained(str(out_dir))
    return len(tokenizer)


# --------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------


def _clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent generator per clip, so each clip depends only on the seed,
    its split and its index."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def make_synthetic_dataset(out_dir: str | Path,
                           seed: int = 0,
                           train_per_combo: int = 3,
                           test_per_combo: int = 1,
                           captions_per_video: int = 2,
                           size: int = 64,
                           fps: int = 10,
                           seconds: int = 4,
                           progress: bool = True) -> dict:
    """Render, encode and annotate the dataset into a new or empty
    ``out_dir``; return the metadata also saved as ``meta.json``.

    ``meta.json`` is written last, so its presence marks a finished run. Use
    :func:`ensure_synthetic_dataset` to (re)generate a dataset in place.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(
            f'{out_dir} is not empty; use ensure_synthetic_dataset(..., '
            'force=True) to regenerate a dataset')
    if seed < 0:
        raise ValueError(f'seed must be non-negative, got {seed}')
    if min(train_per_combo, test_per_combo, captions_per_video) < 1:
        raise ValueError('train_per_combo, test_per_combo and '
                         'captions_per_video must be at least 1')
    params = {
        'seed': seed,
        'train_per_combo': train_per_combo,
        'test_per_combo': test_per_combo,
        'captions_per_video': captions_per_video,
        'size': size,
        'fps': fps,
        'seconds': seconds,
    }
    num_frames = fps * seconds
    per_combo = {'train': train_per_combo, 'test': test_per_combo}

    bar = None
    if progress:
        from mmengine.utils import ProgressBar
        total = len(COMBINATIONS) * (train_per_combo + test_per_combo)
        print(f'Generating {total} synthetic clips', file=sys.stderr)
        bar = ProgressBar(total, file=sys.stderr)

    (out_dir / 'annotations').mkdir(parents=True)
    all_captions: list[str] = []
    split_counts = {}
    for split in SPLITS:
        video_dir = out_dir / 'videos' / split
        video_dir.mkdir(parents=True)
        records = []
        combos = itertools.product(COMBINATIONS, range(per_combo[split]))
        for index, ((colour, shape, motion), _) in enumerate(combos):
            rng = _clip_rng(seed, split, index)
            frames, place = render_clip_and_place(colour, shape, motion, rng,
                                                  size, num_frames)
            captions = captions_for(colour, shape, motion, rng,
                                    captions_per_video, place)
            name = f'{index:05d}_{colour}_{shape}_{motion}.mp4'
            write_mp4(frames, video_dir / name, fps)
            records.append({'video': f'{split}/{name}', 'captions': captions})
            all_captions.extend(captions)
            if bar is not None:
                bar.update()
        with open(out_dir / 'annotations' / f'{split}.json', 'w') as f:
            json.dump(records, f, indent=1)
        split_counts[split] = {
            'videos': len(records),
            'captions': sum(len(r['captions']) for r in records),
        }
    if bar is not None:
        sys.stderr.write('\n')

    num_tokens = build_tokenizer(all_captions, out_dir / 'tokenizer')
    meta = {
        'format_version': FORMAT_VERSION,
        'params': params,
        'num_frames': num_frames,
        'splits': split_counts,
        'vocabulary': {
            'colours': len(COLOURS),
            'shapes': len(SHAPES),
            'motions': len(MOTIONS),
            'combinations': len(COMBINATIONS),
            'tokens': num_tokens,
        },
    }
    with open(out_dir / 'meta.json', 'w') as f:
        json.dump(meta, f, indent=2)
    return meta


def load_meta(out_dir: str | Path) -> dict:
    """The ``meta.json`` of a generated dataset."""
    with open(Path(out_dir) / 'meta.json') as f:
        return json.load(f)


def _is_complete(out_dir: Path, params: dict) -> bool:
    """Whether ``out_dir`` holds a finished dataset made with ``params``."""
    try:
        meta = load_meta(out_dir)
        if (meta.get('format_version') != FORMAT_VERSION
                or meta.get('params') != params):
            return False
        for split, counts in meta['splits'].items():
            records = read_records(out_dir / 'annotations' / f'{split}.json')
            if len(records) != counts['videos'] or not all(
                    (out_dir / 'videos' / r['video']).is_file()
                    for r in records):
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((out_dir / 'tokenizer' / name).is_file()
               for name in _TOKENIZER_FILES)


def ensure_synthetic_dataset(out_dir: str | Path,
                             seed: int = 0,
                             train_per_combo: int = 3,
                             test_per_combo: int = 1,
                             captions_per_video: int = 2,
                             size: int = 64,
                             fps: int = 10,
                             seconds: int = 4,
                             force: bool = False,
                             progress: bool = True) -> Path:
    """Make sure ``out_dir`` holds the dataset for these parameters.

    Does nothing when a complete dataset with the same parameters is there
    (unless ``force``). Otherwise generates it into the sibling
    ``.<name>.partial`` and swaps it in by renaming, so an interrupted run
    never leaves a half dataset that looks complete. A non-empty ``out_dir``
    with entries a dataset does not have is refused rather than deleted.
    Not safe to call from several processes at once (e.g. call it on rank 0
    only).
    """
    out_dir = Path(out_dir)
    params = {
        'seed': seed,
        'train_per_combo': train_per_combo,
        'test_per_combo': test_per_combo,
        'captions_per_video': captions_per_video,
        'size': size,
        'fps': fps,
        'seconds': seconds,
    }
    if not force and _is_complete(out_dir, params):
        return out_dir
    if out_dir.exists():
        if not out_dir.is_dir():
            raise NotADirectoryError(f'{out_dir} exists and is not a folder')
        foreign = {p.name for p in out_dir.iterdir()} - _DATASET_ENTRIES
        if foreign:
            raise FileExistsError(
                f'refusing to replace {out_dir}: it holds {sorted(foreign)}, '
                'which a synthetic dataset does not')

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.with_name(f'.{out_dir.name}.partial')
    stale = out_dir.with_name(f'.{out_dir.name}.old')
    for leftover in (partial, stale):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        make_synthetic_dataset(partial, progress=progress, **params)
        if out_dir.exists():
            out_dir.rename(stale)
        partial.rename(out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)
    return out_dir
