"""tools/visualize_retrieval.py: per-query PNGs, overview, GT marker, gaps,
and the videos found through the dump's video_paths."""
import json
import pickle
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from PIL import Image

from mmclip4clip.datasets.synthetic import build_tokenizer, write_mp4
from mmclip4clip.registry import MODELS
from mmclip4clip.visualization import retrieval as vis

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ('configs/retrieval/clip4clip/'
                 'clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb.py')
# Ids as the prepare scripts write them: 'video7010' for video7010.mp4.
BENCH_IDS = [f'video{i}' for i in range(4)]
BENCH_FRAMES = 12
COLOURS = {'red.mp4': (255, 0, 0), 'blue.mp4': (0, 0, 255),
           'white.mp4': (255, 255, 255)}
# Captions x videos; video 3 ('gone.mp4') has no file.
SCORES = np.array([[0.9, 0.1, 0.2, 0.0],   # q0: GT 0 is top-1
                   [0.5, 0.1, 0.3, 0.8],   # q1: GT 1 ranks 4, outside top-2
                   [0.1, 0.2, 0.9, 0.3],
                   [0.2, 0.1, 0.3, 0.4]], dtype=np.float32)


@pytest.fixture(scope='module')
def dump_file(tmp_path_factory) -> Path:
    """Three solid-colour mp4s under videos/ and a dump pickle naming four."""
    root = tmp_path_factory.mktemp('vis')
    (root / 'videos').mkdir()
    for name, colour in COLOURS.items():
        frames = np.zeros((6, 48, 64, 3), dtype=np.uint8)  # decord: width 64
        frames[:] = colour
        write_mp4(frames, root / 'videos' / name, fps=6)
    dump = dict(scores=SCORES, text_video_index=np.arange(4),
                video_ids=[*COLOURS, 'gone.mp4'],
                captions=['a red clip', 'a blue clip ' * 20, 'white', 'gone'])
    with open(root / 'result.pkl', 'wb') as f:
        pickle.dump(dump, f)
    return root / 'result.pkl'


def strip_origin(row_no: int) -> tuple[int, int]:
    """Top-left pixel of the ``row_no``-th strip's border."""
    return (vis.PAD + vis.LABEL_W,
            vis.HEADER_H + row_no * (vis.THUMB_H + 2 * vis.BORDER + vis.PAD))


def run_visualiser(*args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / 'tools' / 'visualize_retrieval.py'),
         *map(str, args)], cwd=cwd, capture_output=True, text=True,
        timeout=300)


@pytest.fixture
def visualise(load_tool, monkeypatch):
    """``visualise(*args, cwd=ROOT) -> str | None``: the tool's main() run
    in-process (the first test runs it as a user does); returns the message
    it exits with, None when it finishes."""
    tool = load_tool('tools/visualize_retrieval.py')

    def run(*args, cwd: Path = ROOT) -> str | None:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, 'argv',
                            ['visualize_retrieval.py', *map(str, args)])
        try:
            tool.main()
        except SystemExit as stop:
            assert isinstance(stop.code, str), stop.code  # exit 1, a message
            return stop.code
        return None

    return run


def test_tool_writes_query_images_with_gt_marked_and_overview(dump_file):
    """A dump without video_paths whose video_ids are paths under
    --video-root; the missing video drawn only with --allow-missing."""
    out = dump_file.parent / 'out'
    proc = run_visualiser(dump_file, out, '--video-root',
                          dump_file.parent / 'videos', '--query-ids', '0',
                          '1', '--topk', '2', '--frames', '3',
                          '--allow-missing')
    assert proc.returncode == 0, proc.stderr
    assert 'gone.mp4' in proc.stderr and 'placeholder' in proc.stderr

    q0 = Image.open(out / 'query_00000.png').convert('RGB')
    assert q0.size == vis.query_image_size(2, 3)  # GT in the top-2
    x, y = strip_origin(0)
    assert q0.getpixel((x + 1, y + 1)) == vis.GT_COLOUR
    assert q0.getpixel(strip_origin(1)) == vis.ROW_COLOUR
    # Middle of the first thumbnail of the top-1 (red) video is red.
    red = q0.getpixel((x + vis.BORDER + vis.THUMB_W // 2,
                       y + vis.BORDER + vis.THUMB_H // 2))
    assert red[0] > 200 and max(red[1:]) < 60

    q1 = Image.open(out / 'query_00001.png').convert('RGB')
    assert q1.size == vis.query_image_size(3, 3)  # extra GT row below
    assert q1.getpixel(strip_origin(0)) == vis.ROW_COLOUR  # missing video
    assert q1.getpixel(strip_origin(2)) == vis.GT_COLOUR

    overview = Image.open(out / 'overview.png')
    assert overview.size == vis.overview_image_size(2)
    assert overview.getpixel((vis.PAD, vis.PAD))[:3] == vis.GT_COLOUR  # hit
    x_miss = vis.PAD + vis.THUMB_W + 2 * vis.BORDER + vis.PAD
    assert overview.getpixel((x_miss, vis.PAD))[:3] == vis.MISS_COLOUR


def test_tool_stops_on_a_missing_video_naming_it_and_writes_nothing(
        dump_file, tmp_path, visualise):
    # An exit with a message (no other exception): no traceback.
    message = visualise(dump_file, tmp_path / 'out', '--video-root',
                        dump_file.parent / 'videos', '--query-ids', '0', '1',
                        '--topk', '2')
    gone = dump_file.parent / 'videos' / 'gone.mp4'
    assert f'1 of the 4 videos to draw do not exist: {gone}' in message
    assert not (tmp_path / 'out').exists()


def test_dump_without_video_paths_needs_video_root(dump_file, tmp_path,
                                                   visualise):
    message = visualise(dump_file, tmp_path / 'out', '--query-ids', '0')
    assert "no 'video_paths'" in message and '--video-root' in message
    assert not (tmp_path / 'out').exists()


def test_missing_video_is_an_error_or_with_allow_missing_a_placeholder(
        dump_file, tmp_path):
    dump = vis.load_dump(dump_file)
    root = str(dump_file.parent / 'videos')
    with pytest.raises(FileNotFoundError, match='gone.mp4'):
        vis.visualize_retrieval(dump, tmp_path, [3], root, topk=1,
                                num_frames=2)
    assert list(tmp_path.iterdir()) == []
    with pytest.warns(UserWarning, match='gone.mp4.*placeholder'):
        paths = vis.visualize_retrieval(dump, tmp_path, [3], root, topk=1,
                                        num_frames=2, allow_missing=True)
    assert [p.name for p in paths] == ['query_00003.png', 'overview.png']
    image = Image.open(paths[0]).convert('RGB')
    assert image.size == vis.query_image_size(1, 2)
    x, y = strip_origin(0)
    corner = (x + vis.BORDER + vis.THUMB_W - 2, y + vis.BORDER + vis.THUMB_H - 2)
    assert image.getpixel(corner) == vis.PLACEHOLDER_COLOUR
    assert image.getpixel((x, y)) == vis.GT_COLOUR


def test_unreadable_video_is_an_error_naming_it(dump_file, tmp_path):
    videos = tmp_path / 'videos'
    videos.mkdir()
    for name in COLOURS:
        (videos / name).symlink_to(dump_file.parent / 'videos' / name)
    (videos / 'gone.mp4').write_bytes(b'not a video')
    dump = vis.load_dump(dump_file)
    with pytest.raises(RuntimeError, match='cannot read video .*gone.mp4'):
        vis.visualize_retrieval(dump, tmp_path / 'out', [3], str(videos),
                                topk=1)
    assert not (tmp_path / 'out').exists()


def test_load_dump_refuses_a_pickle_that_would_run_code(tmp_path):
    path = tmp_path / 'evil.pkl'

    class RunsCode:
        def __reduce__(self):
            return (print, ('ran',))

    with open(path, 'wb') as f:
        pickle.dump({'scores': RunsCode()}, f)
    with pytest.raises(pickle.UnpicklingError, match='builtins.print'):
        vis.load_dump(path)


def bench_frames(video: int) -> np.ndarray:
    """[F, THUMB_H, THUMB_W, 3] frames (thumbnail-sized, so drawn unscaled):
    a colour per video and a bright band whose row moves with time, so
    every frame of every video differs."""
    frames = np.zeros((BENCH_FRAMES, vis.THUMB_H, vis.THUMB_W, 3), np.uint8)
    frames[:] = (40 * video + 20, 60, 200 - 40 * video)
    for t in range(BENCH_FRAMES):
        frames[t, 8 * t:8 * t + 8] = 250
    return frames


def decode(path: Path) -> np.ndarray:
    """Every frame of a video, RGB, decoded with PyAV directly."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format='rgb24')
                         for frame in container.decode(video=0)])


@pytest.fixture(scope='module')
def benchmark_run(tmp_path_factory, load_tool) -> Path:
    """``tools/test.py --dump result.pkl`` (a random tiny model) on a
    benchmark laid out like the prepared ones, whose video ids are not
    paths; returns the folder it ran in. The tool's main() runs in-process
    (tests/tools/test_tools.py runs it as a user does)."""
    root = tmp_path_factory.mktemp('bench')
    videos = root / 'data' / 'bench' / 'videos'
    videos.mkdir(parents=True)
    records = []
    for i, video_id in enumerate(BENCH_IDS):
        write_mp4(bench_frames(i), videos / f'{video_id}.mp4', fps=10)
        records.append({'video': f'{video_id}.mp4', 'video_id': video_id,
                        'captions': [f'clip number {i}']})
    (root / 'data' / 'bench' / 'test.json').write_text(json.dumps(records))
    # The synthetic config reads its tokenizer from data/synthetic/tokenizer.
    build_tokenizer([c for r in records for c in r['captions']],
                    root / 'data' / 'synthetic' / 'tokenizer')
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        model = MODELS.build(Config.fromfile(CONFIG).model)
    torch.save({'state_dict': model.state_dict()}, root / 'random.pth')
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv('LOCAL_RANK', '0')
        patch.setattr(sys, 'argv', [
            'test.py', str(CONFIG), 'random.pth', '--dump', 'result.pkl',
            '--work-dir', 'work', '--cfg-options',
            'test_dataloader.dataset.ann_file=data/bench/test.json',
            'test_dataloader.dataset.data_prefix.video=data/bench/videos'])
        load_tool('tools/test.py').main()
    return root


def test_dump_carries_the_video_paths_beside_the_ids(benchmark_run):
    dump = vis.load_dump(benchmark_run / 'result.pkl')
    assert dump['video_ids'] == BENCH_IDS
    assert dump['video_paths'] == [f'data/bench/videos/{video}.mp4'
                                   for video in BENCH_IDS]


def test_prepared_benchmark_strips_show_the_videos_frames(benchmark_run,
                                                          tmp_path, visualise,
                                                          recwarn):
    num_frames = 3
    assert visualise(benchmark_run / 'result.pkl', tmp_path / 'here',
                     '--query-ids', '0', '--topk', '4', '--frames',
                     str(num_frames), cwd=benchmark_run) is None
    assert not [w for w in recwarn if 'placeholder' in str(w.message)]

    dump = vis.load_dump(benchmark_run / 'result.pkl')
    _, rows = vis.query_rows(dump['scores'][0], 0, 4)
    assert sorted(rows) == [0, 1, 2, 3]
    image = np.asarray(Image.open(tmp_path / 'here' / 'query_00000.png')
                       .convert('RGB')).astype(int)
    wanted = ((np.arange(num_frames) + 0.5) * BENCH_FRAMES /
              num_frames).astype(int)
    for row_no, video in enumerate(rows):
        decoded = decode(benchmark_run / 'data' / 'bench' / 'videos' /
                         f'{BENCH_IDS[video]}.mp4').astype(int)
        assert len(decoded) == BENCH_FRAMES
        x, y = strip_origin(row_no)
        for i, frame in enumerate(wanted):
            left, top = x + vis.BORDER + i * (vis.THUMB_W + vis.GAP), \
                y + vis.BORDER
            thumb = image[top:top + vis.THUMB_H, left:left + vis.THUMB_W]
            errors = np.abs(thumb[None] - decoded).mean(axis=(1, 2, 3))
            # This very frame, not another one of the video.
            assert errors[frame] < 1, (video, frame, errors)
            assert np.delete(errors, frame).min() > 10, (video, errors)

    # Drawn from another folder, --video-root re-roots the relative paths.
    assert visualise(benchmark_run / 'result.pkl', tmp_path / 'there',
                     '--query-ids', '0', '--topk', '4', '--frames',
                     str(num_frames), '--video-root', benchmark_run,
                     cwd=ROOT) is None
    for name in ('query_00000.png', 'overview.png'):
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / 'there' / name)),
            np.asarray(Image.open(tmp_path / 'here' / name)))


def test_old_dump_of_a_prepared_benchmark_is_a_clear_error(benchmark_run,
                                                           tmp_path,
                                                           visualise):
    """Before video_paths, --video-root joined with ids that are not paths
    drew grey strips without a word; now the tool stops and says why."""
    with open(benchmark_run / 'result.pkl', 'rb') as f:
        dump = pickle.load(f)
    del dump['video_paths']
    with open(tmp_path / 'old.pkl', 'wb') as f:
        pickle.dump(dump, f)
    videos = benchmark_run / 'data' / 'bench' / 'videos'
    message = visualise(tmp_path / 'old.pkl', tmp_path / 'out',
                        '--video-root', videos, '--query-ids', '0',
                        cwd=benchmark_run)
    assert f'do not exist: {videos / "video0"}' in message
    assert 'dump it again' in message
    assert not (tmp_path / 'out').exists()


def test_select_queries_random_is_seeded_distinct_and_ids_are_checked():
    first = vis.select_queries(10, num=4, seed=3)
    assert first == vis.select_queries(10, num=4, seed=3)
    assert len(set(first)) == 4 and all(0 <= q < 10 for q in first)
    assert vis.select_queries(3, num=8) == [0, 1, 2]
    assert vis.select_queries(10, ids=[7, 2]) == [7, 2]
    with pytest.raises(ValueError, match='outside'):
        vis.select_queries(10, ids=[10])


def test_ranks_of_counts_only_strictly_higher_scores():
    assert vis.ranks_of(np.array([0.5, 0.9, 0.5, 0.1])).tolist() == [2, 1, 2, 4]
