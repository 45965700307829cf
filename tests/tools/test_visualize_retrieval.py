"""tools/visualize_retrieval.py: per-query PNGs, overview, GT marker, gaps."""
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmclip4clip.datasets.synthetic import write_mp4
from mmclip4clip.visualization import retrieval as vis

ROOT = Path(__file__).resolve().parents[2]
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


def test_tool_writes_query_images_with_gt_marked_and_overview(dump_file):
    out = dump_file.parent / 'out'
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools' / 'visualize_retrieval.py'),
         str(dump_file), str(out), '--video-root',
         str(dump_file.parent / 'videos'), '--query-ids', '0', '1',
         '--topk', '2', '--frames', '3'],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
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


def test_missing_video_is_a_grey_placeholder_with_a_warning(dump_file,
                                                            tmp_path):
    dump = vis.load_dump(dump_file)
    with pytest.warns(UserWarning, match='gone.mp4.*placeholder'):
        paths = vis.visualize_retrieval(
            dump, tmp_path, [3], str(dump_file.parent / 'videos'), topk=1,
            num_frames=2)
    assert [p.name for p in paths] == ['query_00003.png', 'overview.png']
    image = Image.open(paths[0]).convert('RGB')
    assert image.size == vis.query_image_size(1, 2)
    x, y = strip_origin(0)
    corner = (x + vis.BORDER + vis.THUMB_W - 2, y + vis.BORDER + vis.THUMB_H - 2)
    assert image.getpixel(corner) == vis.PLACEHOLDER_COLOUR
    assert image.getpixel((x, y)) == vis.GT_COLOUR


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
