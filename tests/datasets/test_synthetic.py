"""Tests of the synthetic dataset generator and its CLI."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import decord
import numpy as np
import pytest

from mmclip4clip.datasets import synthetic
from mmclip4clip.datasets.synthetic import (
    COLOURS,
    COLUMNS,
    COMBINATIONS,
    MOTIONS,
    ROWS,
    SHAPES,
    captions_for,
    ensure_synthetic_dataset,
    load_meta,
    make_synthetic_dataset,
    render_clip_and_place,
    write_mp4,
)


def render_clip(*args, **kwargs) -> np.ndarray:
    """The frames alone, [T, H, W, 3] uint8."""
    return render_clip_and_place(*args, **kwargs)[0]


REPO_ROOT = Path(__file__).resolve().parents[2]
# The parameters of the shared ``synthetic`` fixture (conftest.py).
SMALL = {
    'train_per_combo': 1,
    'test_per_combo': 1,
    'captions_per_video': 2,
    'size': 32,
    'fps': 10,
    'seconds': 2,
}
NUM_FRAMES = SMALL['fps'] * SMALL['seconds']
# (axis, sign) of the centroid displacement; axis 0 is x, 1 is y (down).
EXPECTED_MOTION = {
    'left': (0, -1),
    'right': (0, 1),
    'up': (1, -1),
    'down': (1, 1),
}


@pytest.fixture(scope='module')
def dataset(synthetic) -> tuple[Path, dict]:
    """The session's small synthetic dataset and its metadata."""
    return synthetic, load_meta(synthetic)


def load_records(out_dir: Path, split: str) -> list[dict]:
    with open(out_dir / 'annotations' / f'{split}.json') as f:
        return json.load(f)


def parse_name(video: str) -> tuple[str, str, str]:
    """(colour, shape, motion) from 'split/00017_red_square_left.mp4'."""
    _, colour, shape, motion = Path(video).stem.split('_')
    return colour, shape, motion


def centroids(frames: np.ndarray, colour: str) -> np.ndarray:
    """[F, 2] (x, y) centroid of the pixels close to the shape colour."""
    distance = np.abs(frames.astype(int) - np.array(COLOURS[colour])).max(-1)
    mask = distance < 60
    assert mask.sum(axis=(1, 2)).min() > 0, 'shape not found in a frame'
    ys, xs = np.mgrid[:frames.shape[1], :frames.shape[2]]
    area = mask.sum(axis=(1, 2))
    return np.stack([(mask * xs).sum(axis=(1, 2)) / area,
                     (mask * ys).sum(axis=(1, 2)) / area], axis=1)


def assert_moves_as_labelled(track: np.ndarray, motion: str,
                             min_travel: float, tolerance: float) -> None:
    displacement = track[-1] - track[0]
    if motion == 'still':
        assert np.abs(track - track[0]).max() <= tolerance
        return
    axis, sign = EXPECTED_MOTION[motion]
    assert sign * displacement[axis] >= min_travel
    assert abs(displacement[1 - axis]) <= tolerance
    # Constant speed: each step moves the same way (up to noise).
    assert np.all(sign * np.diff(track[:, axis]) >= -tolerance)


def test_annotations_parse_and_counts_match_meta(dataset):
    out_dir, meta = dataset
    for split in ('train', 'test'):
        records = load_records(out_dir, split)
        assert len(records) == len(COMBINATIONS) == meta['splits'][split][
            'videos']
        assert sum(len(r['captions']) for r in records) == meta['splits'][
            split]['captions'] == 2 * len(COMBINATIONS)
        for record in records:
            assert set(record) == {'video', 'captions'}
            assert record['video'].startswith(f'{split}/')
            assert len(set(record['captions'])) == 2
            colour, shape, motion = parse_name(record['video'])
            for caption in record['captions']:
                assert caption == caption.lower()
                assert colour in caption and shape in caption
                named = {m for m in EXPECTED_MOTION if m in caption.split()}
                assert named == ({motion} if motion in EXPECTED_MOTION else
                                 set())
    # One test clip per meaning, so no two test videos share a caption
    # meaning.
    test_meanings = [parse_name(r['video']) for r in load_records(out_dir,
                                                                  'test')]
    assert sorted(test_meanings) == sorted(COMBINATIONS)
    with open(out_dir / 'meta.json') as f:
        assert json.load(f) == meta


def test_every_video_decodes_with_requested_frames_fps_and_size(dataset):
    out_dir, _ = dataset
    for split in ('train', 'test'):
        for record in load_records(out_dir, split):
            reader = decord.VideoReader(str(out_dir / 'videos' /
                                            record['video']))
            assert len(reader) == NUM_FRAMES
            assert reader.get_avg_fps() == pytest.approx(SMALL['fps'])
            assert reader[0].shape == (SMALL['size'], SMALL['size'], 3)


@pytest.mark.parametrize('forward, backward', [('right', 'left'),
                                               ('down', 'up')])
@pytest.mark.parametrize('shape', SHAPES)
def test_reversed_clip_is_exactly_the_opposite_direction(
        forward, backward, shape):
    clip = render_clip('red', shape, forward, np.random.default_rng(3))
    opposite = render_clip('red', shape, backward, np.random.default_rng(3))
    assert np.array_equal(clip[::-1], opposite)
    # Same set of frames, opposite centroid motion.
    assert {f.tobytes() for f in clip} == {f.tobytes() for f in opposite}
    assert_moves_as_labelled(centroids(clip, 'red'), forward, 10, 0.5)
    assert_moves_as_labelled(centroids(opposite, 'red'), backward, 10, 0.5)


@pytest.mark.parametrize('motion', MOTIONS)
@pytest.mark.parametrize('shape', SHAPES)
def test_rendered_centroid_moves_as_labelled(shape, motion):
    for seed in range(5):
        colour = list(COLOURS)[seed]
        clip = render_clip(colour, shape, motion,
                           np.random.default_rng(seed))
        assert clip.shape == (40, 64, 64, 3) and clip.dtype == np.uint8
        if motion == 'still':
            assert (clip == clip[0]).all()
        # A moving shape travels at least 60% of the room it has (> 20 px);
        # its thresholded, motion-blurred outline jitters by about a pixel.
        assert_moves_as_labelled(centroids(clip, colour), motion, 20, 1.5)


def test_decoded_centroid_moves_as_labelled(dataset):
    out_dir, _ = dataset
    for record in load_records(out_dir, 'test'):
        colour, _, motion = parse_name(record['video'])
        frames = decord.VideoReader(str(out_dir / 'videos' /
                                        record['video']))[:].asnumpy()
        assert_moves_as_labelled(centroids(frames, colour), motion, 5, 1.0)
        if motion == 'still':
            assert np.abs(frames.astype(int) - frames[0]).mean() < 1


def test_tokenizer_loads_covers_captions_and_puts_eos_last(dataset):
    from transformers import AutoTokenizer

    out_dir, meta = dataset
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir / 'tokenizer'))
    vocab = tokenizer.get_vocab()
    assert len(vocab) == meta['vocabulary']['tokens']
    assert tokenizer.pad_token_id == 0 and tokenizer.unk_token_id == 1
    assert tokenizer.bos_token == '<|startoftext|>'
    assert tokenizer.eos_token == '<|endoftext|>'
    assert tokenizer.eos_token_id == max(vocab.values())
    assert tokenizer.bos_token_id == max(vocab.values()) - 1
    special = {tokenizer.pad_token_id, tokenizer.unk_token_id,
               tokenizer.bos_token_id, tokenizer.eos_token_id}
    for split in ('train', 'test'):
        for record in load_records(out_dir, split):
            for caption in record['captions']:
                ids = tokenizer(caption, add_special_tokens=False)['input_ids']
                assert len(ids) == len(caption.split())
                assert not special & set(ids)
    ids = tokenizer('A red square moves left')['input_ids']
    assert ids[0] == tokenizer.bos_token_id
    assert ids[-1] == tokenizer.eos_token_id == max(ids)


def test_same_seed_gives_same_captions_and_frames():
    for colour, shape, motion in COMBINATIONS[::7]:
        first, second = (np.random.default_rng(11), np.random.default_rng(11))
        assert np.array_equal(render_clip(colour, shape, motion, first),
                              render_clip(colour, shape, motion, second))
        assert (captions_for(colour, shape, motion, first, 3) ==
                captions_for(colour, shape, motion, second, 3))
    other = render_clip('red', 'circle', 'left', np.random.default_rng(12))
    assert not np.array_equal(
        other, render_clip('red', 'circle', 'left', np.random.default_rng(11)))


def test_same_seed_gives_same_dataset(dataset, tmp_path):
    out_dir, meta = dataset
    again = make_synthetic_dataset(tmp_path / 'again', seed=0, progress=False,
                                   **SMALL)
    assert again == meta
    for split in ('train', 'test'):
        records = load_records(out_dir, split)
        assert load_records(tmp_path / 'again', split) == records
    video = load_records(out_dir, 'test')[0]['video']
    assert ((tmp_path / 'again' / 'videos' / video).read_bytes() ==
            (out_dir / 'videos' / video).read_bytes())


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(
            path.read_bytes()).hexdigest()
        for path in sorted(root.rglob('*')) if path.is_file()
    }


def test_two_fresh_processes_write_identical_files(tmp_path):
    """The CLI run twice, in processes that differ in their string hashing
    and in the CPUs they may use, writes the same bytes in every file."""
    command = [
        sys.executable, 'tools/data/make_synthetic_dataset.py',
        '--train-per-combo', '1', '--test-per-combo', '1', '--size', '32',
        '--seconds', '2', '--seed', '3'
    ]
    one_cpu = min(os.sched_getaffinity(0))
    runs = {
        'first': ({'PYTHONHASHSEED': '1'}, None),
        'second': ({'PYTHONHASHSEED': '2'},
                   lambda: os.sched_setaffinity(0, {one_cpu})),
    }
    for name, (env, preexec) in runs.items():
        result = subprocess.run(
            [*command, '--out', str(tmp_path / name)], cwd=REPO_ROOT,
            env={**os.environ, **env}, preexec_fn=preexec,
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    first = file_digests(tmp_path / 'first')
    assert len(first) == 2 * len(COMBINATIONS) + 2 + 1 + 2  # videos,
    # annotations, meta.json, tokenizer.json and tokenizer_config.json
    assert file_digests(tmp_path / 'second') == first


def test_encoded_bytes_do_not_depend_on_the_cpu_instruction_set(
        monkeypatch, tmp_path):
    """x264 chooses its SIMD routines from the CPU it runs on; ``asm=0``
    (no SIMD at all) stands in for another machine's CPU here."""
    default = dict(synthetic.X264_OPTIONS)
    without_simd = {
        **default, 'x264-params': default['x264-params'] + ':asm=0'
    }
    # Clips whose bytes changed with the instruction set before the fix.
    for index in (0, 2, 4, 6):
        frames = render_clip(*COMBINATIONS[index],
                             np.random.default_rng(index))
        encoded = {}
        for name, options in (('default', default),
                              ('without_simd', without_simd)):
            monkeypatch.setattr(synthetic, 'X264_OPTIONS', options)
            path = tmp_path / f'{index}_{name}.mp4'
            write_mp4(frames, path, fps=10)
            encoded[name] = path.read_bytes()
        assert encoded['default'] == encoded['without_simd'], index
        # One encoder thread, whatever the number of cores.
        assert b' threads=1 ' in encoded['default']


def test_ensure_does_no_work_when_complete_and_regenerates_otherwise(
        tmp_path):
    out_dir = tmp_path / 'synthetic'
    assert ensure_synthetic_dataset(out_dir, progress=False,
                                    **SMALL) == out_dir
    meta_file = out_dir / 'meta.json'
    stamp = meta_file.stat().st_mtime_ns
    assert ensure_synthetic_dataset(out_dir, progress=False,
                                    **SMALL) == out_dir
    assert meta_file.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ['synthetic']

    # A missing video makes the dataset incomplete.
    video = out_dir / 'videos' / load_records(out_dir, 'train')[5]['video']
    video.unlink()
    ensure_synthetic_dataset(out_dir, progress=False, **SMALL)
    assert video.is_file()

    # Other parameters replace the dataset.
    ensure_synthetic_dataset(out_dir, progress=False, **{**SMALL, 'seed': 1})
    with open(meta_file) as f:
        assert json.load(f)['params']['seed'] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ['synthetic']


def test_ensure_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / 'notes.txt').write_text('not a dataset')
    with pytest.raises(FileExistsError):
        ensure_synthetic_dataset(tmp_path, progress=False, **SMALL)
    assert (tmp_path / 'notes.txt').is_file()


def test_cli_generates_and_prints_counts(tmp_path):
    out_dir = tmp_path / 'cli'
    command = [
        sys.executable, 'tools/data/make_synthetic_dataset.py', '--out',
        str(out_dir), '--train-per-combo', '1', '--test-per-combo', '1',
        '--captions-per-video', '1', '--size', '16', '--seconds', '1'
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'train: 90 videos, 90 captions' in result.stdout
    assert 'test: 90 videos, 90 captions' in result.stdout
    assert len(list((out_dir / 'videos' / 'test').glob('*.mp4'))) == 90


@pytest.mark.parametrize('motion, axis', [('left', 0), ('right', 0),
                                          ('up', 1), ('down', 1)])
def test_motion_blur_shows_the_axis_in_every_frame(motion, axis):
    clip = render_clip('white', 'square', motion, np.random.default_rng(5))
    still = render_clip('white', 'square', 'still', np.random.default_rng(5))
    for frames in (clip, still):
        # White shape (245) over a dark background (<= 80 per channel).
        lit = frames.min(-1) > 100
        # Extent of the lit area along x (columns) and y (rows), per frame.
        extent_x = lit.any(axis=1).sum(-1)
        extent_y = lit.any(axis=2).sum(-1)
        if frames is still:
            assert (extent_x == extent_y).all()  # a sharp square
        elif axis == 0:
            assert (extent_x > extent_y).all()
        else:
            assert (extent_y > extent_x).all()


@pytest.mark.parametrize('motion', MOTIONS)
def test_place_words_name_the_third_the_shape_is_in(motion):
    """Rows for horizontal movers, columns for vertical ones, both for still
    shapes; read off the shape's pixels, the same for the reversed clip."""
    seen = set()
    for seed in range(40):
        clip, place = render_clip_and_place(
            'white', 'square', motion, np.random.default_rng(seed))
        x, y = centroids(clip, 'white').mean(axis=0)
        row, column = ROWS[int(3 * y / 64)], COLUMNS[int(3 * x / 64)]
        # Centroids within a pixel of a third's border may round either way.
        if min(abs(v * 3 / 64 - round(v * 3 / 64)) for v in (x, y)) < 0.05:
            continue
        expected = {'still': f'at the {row} {column}',
                    'left': f'along the {row}', 'right': f'along the {row}',
                    'up': f'along the {column}', 'down': f'along the {column}'}
        assert place == expected[motion], (seed, x, y)
        seen.add(place)
        if motion in EXPECTED_MOTION:
            opposite = {'left': 'right', 'right': 'left', 'up': 'down',
                        'down': 'up'}[motion]
            assert render_clip_and_place('white', 'square', opposite,
                                         np.random.default_rng(seed))[1] == place
    assert len(seen) >= 3  # the words vary with the clip


def test_captions_end_with_the_place_words():
    captions = captions_for('red', 'circle', 'up', np.random.default_rng(0), 2,
                            'along the west')
    assert all(c.endswith(' up along the west') for c in captions)
    assert all(c.startswith(('a red circle', 'the red circle'))
               for c in captions)
