"""Data tools: re-encoding a video tree (rate, size, layout, reruns,
failures), the dataset check (counts per category, exit codes) and the
dataset's skip_broken option."""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import decord
import numpy as np
import pytest
from mmengine.registry import DATASETS, DefaultScope

import mmclip4clip  # noqa: F401  (registers datasets and transforms)
from mmclip4clip.datasets.check import CheckTarget, check_targets
from mmclip4clip.datasets.compress import (
    compress_video,
    compress_videos,
    output_size,
)
from mmclip4clip.datasets.synthetic import build_tokenizer, write_mp4

REPO = Path(__file__).resolve().parents[2]
CLIPS = ('a/one.mp4', 'a/b/two.mp4', 'c/three.mp4', 'four.mp4')
FPS, SECONDS, HEIGHT, WIDTH = 10, 2, 48, 64


def clip(path: Path, seed: int, num_frames: int = FPS * SECONDS) -> Path:
    """A smooth moving gradient, [num_frames, 48, 64], at 10 fps."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 200, 3)
    ys, xs = np.mgrid[:HEIGHT, :WIDTH]
    frames = np.stack([
        (base + 50 * np.sin((xs + 3 * t) / 9 + ys / 7)[..., None]).clip(0, 255)
        for t in range(num_frames)
    ]).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(frames, path, FPS)
    return path


@pytest.fixture(scope='module')
def source_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('compress') / 'src'
    for seed, rel in enumerate(CLIPS):
        clip(root / rel, seed)
    return root


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns
            for p in root.rglob('*') if p.is_file()}


# ---------------------------------------------------------------- compress


@pytest.mark.parametrize('size, expected', [
    ((64, 48, 32), (42, 32)), ((48, 64, 32), (32, 42)),
    ((1920, 1080, 224), (398, 224)), ((64, 48, 224), (64, 48)),
    ((65, 47, 224), (64, 46))])
def test_output_size_has_short_side_size_even_sides_and_never_upscales(
        size, expected):
    assert output_size(*size) == expected


def test_compress_gives_rate_and_short_side_keeps_layout_and_reruns_idle(
        source_tree, tmp_path):
    dst = tmp_path / 'dst'
    summary = compress_videos(source_tree, dst, fps=3, size=32, workers=2,
                              progress=False)
    assert summary.encoded == sorted(CLIPS) and not summary.failed
    outputs = sorted(str(p.relative_to(dst)) for p in dst.rglob('*')
                     if p.is_file())
    assert outputs == sorted(CLIPS)  # same layout, no temporaries left
    for rel in CLIPS:
        reader = decord.VideoReader(str(dst / rel))
        assert reader.get_avg_fps() == 3
        assert len(reader) == 3 * SECONDS
        assert reader[0].shape == (32, 42, 3)  # 48x64 -> 32x42.67 -> even
    before = mtimes(dst)
    again = compress_videos(source_tree, dst, fps=3, size=32, workers=2,
                            progress=False)
    assert again.encoded == [] and again.failed == []
    assert sorted(again.skipped) == sorted(CLIPS)
    assert mtimes(dst) == before
    # A source newer than its output, or an output never renamed into
    # place (interrupted run), is done again; nothing else is.
    os.utime(source_tree / CLIPS[0],
             ns=(before[CLIPS[0]] + 10**9, before[CLIPS[0]] + 10**9))
    (dst / CLIPS[1]).unlink()
    (dst / CLIPS[1]).with_name('.two.mp4.part').write_bytes(b'partial')
    third = compress_videos(source_tree, dst, fps=3, size=32, workers=1,
                            progress=False)
    assert third.encoded == sorted(CLIPS[:2])
    assert sorted(third.skipped) == sorted(CLIPS[2:])
    assert not (dst / CLIPS[1]).with_name('.two.mp4.part').exists()


def test_output_frames_are_the_source_frames_shown_at_output_times(tmp_path):
    # Frame i of the 10 fps source has grey level 10 * i.
    frames = np.stack([np.full((HEIGHT, WIDTH, 3), 10 * i, np.uint8)
                       for i in range(FPS * SECONDS)])
    write_mp4(frames, tmp_path / 'grey.mp4', FPS)
    for fps in (3, 5, 15):
        out = tmp_path / f'grey_{fps}.mp4'
        written = compress_video(tmp_path / 'grey.mp4', out, fps=fps, size=32)
        reader = decord.VideoReader(str(out))
        levels = [round(float(reader[k].asnumpy().mean()) / 10)
                  for k in range(len(reader))]
        # Output frame k shows the last source frame at or before k / fps.
        expected = [int(np.floor(k * FPS / fps + 1e-9))
                    for k in range(fps * SECONDS)]
        assert written == len(reader) == fps * SECONDS
        assert levels == expected


def test_corrupt_source_is_listed_with_its_error_and_others_succeed(
        source_tree, tmp_path):
    src = tmp_path / 'src'
    for rel in CLIPS[:2]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes((source_tree / rel).read_bytes())
    (src / 'a' / 'bad.mp4').write_bytes(np.random.default_rng(0).bytes(4096))
    summary = compress_videos(src, tmp_path / 'dst', fps=3, size=32,
                              workers=2, progress=False)
    assert summary.encoded == sorted(CLIPS[:2])
    assert [path for path, _ in summary.failed] == ['a/bad.mp4']
    assert 'Invalid data' in summary.failed[0][1]
    assert not (tmp_path / 'dst' / 'a' / 'bad.mp4').exists()
    assert not (tmp_path / 'dst' / 'a' / '.bad.mp4.part').exists()


# ------------------------------------------------------------------ check


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope='module')
def dataset_dir(tmp_path_factory, source_tree) -> Path:
    """Clean train/test sets sharing four videos, a truncated copy, and a
    word-level tokenizer."""
    root = tmp_path_factory.mktemp('check')
    videos = root / 'videos'
    for rel in CLIPS:
        (videos / rel).parent.mkdir(parents=True, exist_ok=True)
        (videos / rel).write_bytes((source_tree / rel).read_bytes())
    data = (videos / CLIPS[0]).read_bytes()
    (videos / 'truncated.mp4').write_bytes(data[:len(data) // 2])
    captions = [f'clip number {i} moves' for i in range(len(CLIPS))]
    write_json(root / 'clean.json', [dict(video=rel, captions=[caption])
                                     for rel, caption in zip(CLIPS, captions)])
    build_tokenizer(captions + ['a b c d e f g h'], root / 'tokenizer')
    return root


def test_check_tool_reports_planted_problems_and_exits_nonzero(dataset_dir,
                                                                tmp_path):
    bad = write_json(tmp_path / 'bad.json', [
        dict(video=CLIPS[0], captions=['clip number 0 moves']),
        dict(video='a/not_there.mp4', captions=['clip number 1 moves']),
        dict(video='truncated.mp4', captions=['clip number 2 moves']),
        dict(video=CLIPS[1], captions=['clip number 3 moves', '  ']),
        dict(video=CLIPS[2], captions=['a b c d e f g h']),  # 8 > 6 tokens
        dict(video=CLIPS[3], captions=['clip'], start=5, end=9),  # 2 s clip
    ])
    pipeline = [
        dict(type='AVInit'),
        dict(type='SampleFramesByRate', max_frames=4, feature_framerate=2),
        dict(type='AVDecode'),
        dict(type='TokenizeCaptions',
             tokenizer=str(dataset_dir / 'tokenizer'), max_words=8),
    ]
    clean = dict(type='VideoTextDataset',
                 ann_file=str(dataset_dir / 'clean.json'),
                 data_prefix=dict(video=str(dataset_dir / 'videos')),
                 pipeline=pipeline, test_mode=True)
    config = tmp_path / 'config.py'
    config.write_text(
        f'train_dataloader = dict(dataset=dict(type="VideoTextDataset", '
        f'ann_file={str(bad)!r}, '
        f'data_prefix=dict(video={str(dataset_dir / "videos")!r}), '
        f'pipeline={pipeline!r}))\n'
        f'val_dataloader = dict(dataset={clean!r})\n'
        'test_dataloader = val_dataloader\n')
    result = subprocess.run(
        [sys.executable, str(REPO / 'tools/data/check_dataset.py'),
         str(config), '--workers', '2'],
        capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert ('errors: annotation_file 0, bad_record 0, missing 1, empty 0, '
            'unreadable 1, too_short 1, empty_caption 1') in out
    assert 'warnings: segment_past_end 0, long_caption 1' in out
    assert str(dataset_dir / 'videos' / 'a' / 'not_there.mp4') in out
    assert str(dataset_dir / 'videos' / 'truncated.mp4') in out
    assert 'record 3' in out  # the empty caption
    assert f'tokens of {dataset_dir / "tokenizer"}' in out
    # val and test share one dataset: checked once, and it is clean.
    assert out.count(str(dataset_dir / 'clean.json')) == 1
    assert '[val, test]' in out
    assert 'FAILED: 4 errors, 1 warnings in 2 annotation file(s)' in out


def test_check_passes_on_a_clean_set(dataset_dir, monkeypatch, capsys):
    report, = check_targets([CheckTarget(
        str(dataset_dir / 'clean.json'), str(dataset_dir / 'videos'),
        max_words=8, tokenizer=str(dataset_dir / 'tokenizer'))])
    assert report.issues == [] and report.num_videos == len(CLIPS)
    monkeypatch.setattr(sys, 'argv', [
        'check_dataset.py', str(dataset_dir / 'clean.json'),
        str(dataset_dir / 'videos'), '--workers', '1'])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / 'tools/data/check_dataset.py'),
                       run_name='__main__')
    assert exit_info.value.code == 0
    assert 'OK: 0 errors, 0 warnings' in capsys.readouterr().out


def test_check_reports_clips_cut_short_whatever_the_pipeline_decoder(
        tmp_path):
    """A camera clip and a Matroska clip cut short with their index first:
    both open (decord reads the Matroska one as a shorter clip), both are
    ``unreadable`` with the reader's own reason; whole copies are clean."""
    from test_loading import camera_clips, cut, index_first, write_clip

    videos = tmp_path / 'videos'
    videos.mkdir()
    bunny = next(p for p in camera_clips() if 'bigbuckbunny' in p)
    whole = [index_first(bunny, videos / 'bunny.mp4'),
             write_clip(videos / 'clip.mkv')]
    cuts = [cut(path, videos / f'cut_{Path(path).name}', 0.3)
            for path in whole]
    assert 0 < len(decord.VideoReader(cuts[1])) < 90
    ann = write_json(tmp_path / 'ann.json', [
        dict(video=Path(path).name, captions=[f'clip {i}'])
        for i, path in enumerate(whole + cuts)])
    report, = check_targets([CheckTarget(str(ann), str(videos))])
    assert [(i.category, i.path, i.record) for i in report.issues] == [
        ('unreadable', cuts[0], 2), ('unreadable', cuts[1], 3)]
    bunny_issue = str(report.issues[0])
    assert bunny_issue.startswith(f'record 2: {cuts[0]}: cannot open: '
                                  'BrokenVideoError: cut short or damaged: '
                                  '27 of the 132 frames')
    assert 'its frames span 0.52 s of the 3.60 s' in str(report.issues[1])


# ------------------------------------------------------------ skip_broken


def build(ann_file, video_dir, test_mode=False, **kwargs):
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        return DATASETS.build(dict(
            type='VideoTextDataset', ann_file=str(ann_file),
            data_prefix=dict(video=str(video_dir)), test_mode=test_mode,
            pipeline=[
                dict(type='AVInit'),
                dict(type='SampleFramesByRate', max_frames=4,
                     feature_framerate=2),
                dict(type='AVDecode'),
            ], **kwargs))


def test_skip_broken_skips_and_counts_while_default_raises_naming_file(
        dataset_dir, tmp_path):
    ann = write_json(tmp_path / 'ann.json', [
        dict(video=CLIPS[0], captions=['x']),
        dict(video='truncated.mp4', captions=['y', 'z']),
        dict(video=CLIPS[1], captions=['w']),
    ])
    truncated = str(dataset_dir / 'videos' / 'truncated.mp4')
    for test_mode, index in ((False, 1), (True, 1)):
        dataset = build(ann, dataset_dir / 'videos', test_mode=test_mode)
        with pytest.raises(RuntimeError, match=truncated):
            dataset[index]

    train = build(ann, dataset_dir / 'videos', skip_broken=True)
    assert len(train) == 4
    train._rand_another = lambda: 0  # mmengine's refetch, made predictable
    for index in (1, 2):  # the broken video's two samples
        assert train[index]['filename'] == str(dataset_dir / 'videos' /
                                                CLIPS[0])
    assert list(train.skipped) == [truncated] and train.num_skipped == 2
    assert truncated in train.skip_summary()

    test = build(ann, dataset_dir / 'videos', test_mode=True,
                 skip_broken=True)
    assert [test.get_data_info(i)['filename'] for i in range(len(test))] \
        == [str(dataset_dir / 'videos' / rel) for rel in CLIPS[:2]]
    assert list(test.skipped) == [truncated]
    assert 'cannot open' in test.skipped[truncated]


def test_skip_broken_drops_missing_files_that_otherwise_raise(dataset_dir,
                                                              tmp_path):
    ann = write_json(tmp_path / 'ann.json', [
        dict(video=CLIPS[0], captions=['x']),
        dict(video='gone.mp4', captions=['y', 'z'])])
    with pytest.raises(FileNotFoundError, match='gone.mp4'):
        build(ann, dataset_dir / 'videos')
    dataset = build(ann, dataset_dir / 'videos', skip_broken=True)
    assert len(dataset) == 1 and dataset.num_skipped == 2
    assert list(dataset.skipped) == [str(dataset_dir / 'videos' / 'gone.mp4')]
