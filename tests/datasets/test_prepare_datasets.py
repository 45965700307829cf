"""tools/data/prepare_*.py: small fixtures in each dataset's own format become
annotation files with the right videos, captions and segments, that
VideoTextDataset loads, and bad inputs fail naming the file and row."""
import csv
import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mmengine.registry import DATASETS, DefaultScope

import mmclip4clip  # noqa: F401  (registers datasets and transforms)
from mmclip4clip.datasets import AnnotationError, load_annotations
from mmclip4clip.datasets.prepare import (
    SourceFormatError,
    common,
    prepare_activitynet,
    prepare_didemo,
    prepare_lsmdc,
    prepare_msrvtt,
    prepare_msvd,
)
from mmclip4clip.datasets.synthetic import write_mp4

REPO = Path(__file__).resolve().parents[2]
CLIP_SECONDS, CLIP_FPS = 2, 4


@pytest.fixture(scope='module')
def clip(tmp_path_factory) -> Path:
    """A 2 s, 4 fps, 16 px mp4 that every fixture video is a copy of."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (CLIP_SECONDS * CLIP_FPS, 16, 16, 3),
                          dtype=np.uint8)
    path = tmp_path_factory.mktemp('clip') / 'clip.mp4'
    write_mp4(frames, path, fps=CLIP_FPS)
    return path


def place_videos(clip: Path, video_dir: Path, records: list[dict]) -> None:
    """Copy the clip to every video path (the reader goes by content, not by name)."""
    for record in records:
        target = video_dir / record['video']
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, target)


def build(ann_file: Path, video_dir: Path, test_mode: bool):
    """A VideoTextDataset that samples frame indices (no decoding)."""
    pipeline = [dict(type='AVInit'),
                dict(type='SampleFramesByRate', max_frames=64,
                     feature_framerate=1)]
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        return DATASETS.build(dict(
            type='VideoTextDataset', ann_file=str(ann_file),
            data_prefix=dict(video=str(video_dir)), pipeline=pipeline,
            test_mode=test_mode))


def check_dataset(ann_file: Path, video_dir: Path) -> None:
    """Train mode: one sample per caption; test mode: one per record, with
    all its captions; every sample reads frames of its video."""
    records = load_annotations(str(ann_file))
    train = build(ann_file, video_dir, test_mode=False)
    assert len(train) == sum(len(r['captions']) for r in records)
    assert [train[i]['captions'] for i in range(len(train))] == [
        [c] for r in records for c in r['captions']]
    test = build(ann_file, video_dir, test_mode=True)
    assert len(test) == len(records)
    for i, record in enumerate(records):
        sample = test[i]
        assert sample['filename'] == str(video_dir / record['video'])
        assert sample['captions'] == record['captions']
        assert len(sample['frame_inds']) > 0


def summaries(splits) -> dict[str, tuple[int, int]]:
    return {s.name: (s.num_videos, s.num_captions) for s in splits}


def records_of(out_dir: Path, filename: str) -> list[dict]:
    return json.loads((out_dir / filename).read_text())


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


# ------------------------------------------------------------------ MSR-VTT


def make_msrvtt(root: Path) -> Path:
    root.mkdir(parents=True)
    sentences = [
        ('video0', '  a man   is\tcooking pasta. '),
        ('video1', 'he says, "go!" & leaves...'),
        ('video0', 'someone cooks'),
        ('video2', 'a cat'),
        ('video3', 'cars race'),
        ('video0', 'a chef in a kitchen'),
        ('video3', 'a race on a track'),
        ('video1', 'a man talks'),
        ('video5', 'not in any split'),
        ('video4', 'a woman sings'),
    ]
    (root / 'MSRVTT_data.json').write_text(json.dumps({
        'videos': [dict(video_id=f'video{i}', id=i) for i in range(6)],
        'sentences': [dict(video_id=v, caption=c, sen_id=i)
                      for i, (v, c) in enumerate(sentences)]}))
    write_csv(root / 'MSRVTT_train.9k.csv', ['video_id'],
              [['video0'], ['video1'], ['video2'], ['video3']])
    # 7k is a subset of 9k.
    write_csv(root / 'MSRVTT_train.7k.csv', ['video_id'],
              [['video0'], ['video2']])
    write_csv(root / 'MSRVTT_JSFUSION_test.csv',
              ['key', 'vid_key', 'video_id', 'sentence'],
              [['ret0', 'msr4', 'video4', 'a woman, smiling, sings'],
               ['ret1', 'msr1', 'video1', 'someone says "hi"  ']])
    return root


def test_msrvtt_train_splits_carry_all_captions_and_test_is_1k_pairs(
        tmp_path, clip):
    root, out = make_msrvtt(tmp_path / 'src'), tmp_path / 'ann'
    splits = prepare_msrvtt(root, out)
    assert summaries(splits) == {'train_9k': (4, 8), 'train_7k': (2, 4),
                                 'test_1k': (2, 2)}
    train_9k = records_of(out, 'msrvtt_train_9k.json')
    assert train_9k[0] == dict(
        video='video0.mp4', video_id='video0',
        captions=['a man is cooking pasta.', 'someone cooks',
                  'a chef in a kitchen'])
    assert train_9k[1]['captions'] == ['he says, "go!" & leaves...',
                                       'a man talks']
    train_7k = records_of(out, 'msrvtt_train_7k.json')
    assert train_7k == [r for r in train_9k
                        if r['video_id'] in ('video0', 'video2')]
    test = records_of(out, 'msrvtt_test_1k.json')
    assert test == [
        dict(video='video4.mp4', captions=['a woman, smiling, sings'],
             video_id='video4'),
        dict(video='video1.mp4', captions=['someone says "hi"'],
             video_id='video1')]
    videos = tmp_path / 'videos'
    place_videos(clip, videos, train_9k + test)
    for filename in ('msrvtt_train_9k.json', 'msrvtt_test_1k.json'):
        check_dataset(out / filename, videos)


def test_prepare_script_prints_one_summary_line_per_split(tmp_path):
    root, out = make_msrvtt(tmp_path / 'src'), tmp_path / 'ann'
    result = subprocess.run(
        [sys.executable, str(REPO / 'tools/data/prepare_msrvtt.py'),
         '--root', str(root), '--out', str(out)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        'train_9k: 4 videos, 8 captions',
        'train_7k: 2 videos, 4 captions',
        'test_1k: 2 videos, 2 captions',
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        'msrvtt_test_1k.json', 'msrvtt_train_7k.json', 'msrvtt_train_9k.json']


# --------------------------------------------------------------------- MSVD


def make_msvd(root: Path) -> Path:
    root.mkdir(parents=True)
    captions = {
        '-4wsuPCjDBc_5_15': [['a', 'man', 'is', 'cooking'],
                             ['someone', 'cooks', '.'], ['a', 'chef']],
        'abc_1_9': [['a', 'dog', 'runs']],
        'xyz_0_4': [['a', 'girl', 'sings'], ['someone', 'is', 'singing']],
        'unused_0_1': [['never', 'listed']],
    }
    with open(root / 'raw-captions.pkl', 'wb') as f:
        pickle.dump(captions, f)
    (root / 'train_list.txt').write_text('-4wsuPCjDBc_5_15\nabc_1_9\n\n')
    (root / 'val_list.txt').write_text('abc_1_9\n')
    (root / 'test_list.txt').write_text('xyz_0_4\n')
    return root


def test_msvd_splits_join_tokens_and_keep_all_captions(tmp_path, clip):
    root, out = make_msvd(tmp_path / 'src'), tmp_path / 'ann'
    splits = prepare_msvd(root, out)
    assert summaries(splits) == {'train': (2, 4), 'val': (1, 1),
                                 'test': (1, 2)}
    train = records_of(out, 'msvd_train.json')
    assert train[0] == dict(video='-4wsuPCjDBc_5_15.avi',
                            video_id='-4wsuPCjDBc_5_15',
                            captions=['a man is cooking', 'someone cooks .',
                                      'a chef'])
    test = records_of(out, 'msvd_test.json')
    videos = tmp_path / 'videos'
    place_videos(clip, videos, train + test)
    check_dataset(out / 'msvd_train.json', videos)
    check_dataset(out / 'msvd_test.json', videos)


# -------------------------------------------------------------------- LSMDC

LSMDC_ROWS = {
    'LSMDC16_annos_training.csv': [
        ('3011_BLIND_DATING_01.11.23.496-01.11.25.853', 'SOMEONE sits.'),
        ('1004_Juno_00.00.32.849-00.00.35.458', 'She walks  away.'),
        # The same clip again: a second sentence for it.
        ('3011_BLIND_DATING_01.11.23.496-01.11.25.853', 'He smiles, "ok".'),
    ],
    'LSMDC16_annos_val.csv': [
        ('1004_Juno_00.01.00.000-00.01.02.500', 'A car stops.'),
    ],
    'LSMDC16_challenge_1000_publictect.csv': [
        ('0001_American_Beauty_00.02.29.298-00.02.30.004', 'SOMEONE runs.'),
        ('1004_Juno_00.00.40.000-00.00.44.100', 'Rain falls.'),
    ],
}


def make_lsmdc(root: Path) -> Path:
    root.mkdir(parents=True)
    for filename, rows in LSMDC_ROWS.items():
        (root / filename).write_text(''.join(
            f'{clip_id}\t00.00.01.000\t00.00.03.000\t00.00.00.500\t'
            f'00.00.03.500\t{sentence}\n' for clip_id, sentence in rows))
    return root


def test_lsmdc_clips_sit_in_movie_folders_and_group_their_sentences(
        tmp_path, clip):
    root, out = make_lsmdc(tmp_path / 'src'), tmp_path / 'ann'
    splits = prepare_lsmdc(root, out)
    assert summaries(splits) == {'train': (2, 3), 'val': (1, 1),
                                 'test_1k': (2, 2)}
    train = records_of(out, 'lsmdc_train.json')
    clip_id = '3011_BLIND_DATING_01.11.23.496-01.11.25.853'
    assert train[0] == dict(video=f'3011_BLIND_DATING/{clip_id}.avi',
                            video_id=clip_id,
                            captions=['SOMEONE sits.', 'He smiles, "ok".'])
    assert train[1]['video'] == \
        '1004_Juno/1004_Juno_00.00.32.849-00.00.35.458.avi'
    assert train[1]['captions'] == ['She walks away.']
    # Movie time stamps are not segments of the clip files.
    assert all('start' not in r for r in train)
    test = records_of(out, 'lsmdc_test_1k.json')
    assert test[0]['video'].startswith('0001_American_Beauty/')
    videos = tmp_path / 'videos'
    place_videos(clip, videos, train + test)
    check_dataset(out / 'lsmdc_train.json', videos)
    check_dataset(out / 'lsmdc_test_1k.json', videos)


# ------------------------------------------------------ ActivityNet Captions


def make_activitynet(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / 'train.json').write_text(json.dumps({
        'v_aaa': dict(duration=1.6, timestamps=[[0, 0.5], [0.4, 1.6],
                                                [1.2, 0.3]],
                      sentences=['A man walks in. ', '  He sits down.',
                                 'He waves,  "bye".']),
        'v_bbb': dict(duration=2.0, timestamps=[[5.2, 9.0]],
                      sentences=['A dog runs.']),
    }))
    (root / 'val_1.json').write_text(json.dumps({
        'v_ccc': dict(duration=30.2, timestamps=[[1, 3], [2.5, 2.5]],
                      sentences=['Rain falls.', 'It stops.']),
    }))
    return root


def test_activitynet_paragraphs_span_the_whole_video(tmp_path, clip):
    root, out = make_activitynet(tmp_path / 'src'), tmp_path / 'ann'
    splits = prepare_activitynet(root, out)
    assert summaries(splits) == {'train': (2, 2), 'val_1': (1, 1)}
    train = records_of(out, 'activitynet_train.json')
    assert train[0] == dict(
        video='v_aaa.mp4', video_id='v_aaa', start=0, end=2,
        captions=['A man walks in. He sits down. He waves, "bye".'])
    val = records_of(out, 'activitynet_val_1.json')
    assert val == [dict(video='v_ccc.mp4', video_id='v_ccc', start=0,
                        end=31, captions=['Rain falls. It stops.'])]
    videos = tmp_path / 'videos'
    place_videos(clip, videos, train + val)
    check_dataset(out / 'activitynet_train.json', videos)
    check_dataset(out / 'activitynet_val_1.json', videos)


def test_activitynet_sentence_level_records_whole_second_segments(tmp_path):
    root, out = make_activitynet(tmp_path / 'src'), tmp_path / 'ann'
    splits = prepare_activitynet(root, out, sentence_level=True)
    assert summaries(splits) == {
        'train': (2, 2), 'train_sentences': (2, 4),
        'val_1': (1, 1), 'val_1_sentences': (1, 2)}
    segments = [(r['video_id'], r['start'], r['end']) for r in
                records_of(out, 'activitynet_train_sentences.json')]
    # floor / ceil; a reversed pair swapped; a start past the 2 s video
    # kept inside it.
    assert segments == [('v_aaa#0', 0, 1), ('v_aaa#1', 0, 2),
                        ('v_aaa#2', 0, 2), ('v_bbb#0', 1, 9)]
    val = records_of(out, 'activitynet_val_1_sentences.json')
    # An empty segment is widened to 1 s.
    assert [(r['start'], r['end']) for r in val] == [(1, 3), (2, 3)]
    assert [r['video'] for r in val] == ['v_ccc.mp4', 'v_ccc.mp4']


def test_video_dir_finds_official_and_clip4clip_names_and_drops_missing(
        tmp_path, capsys):
    root, out = make_activitynet(tmp_path / 'src'), tmp_path / 'ann'
    videos = tmp_path / 'videos'
    (videos / 'part1').mkdir(parents=True)
    (videos / 'part1' / 'v_aaa.webm').write_bytes(b'')  # official name
    (videos / 'bbb.mp4').write_bytes(b'')  # CLIP4Clip's name, no v_
    (videos / 'ccc.mkv').write_bytes(b'')
    (videos / 'notes.txt').write_bytes(b'')
    splits = prepare_activitynet(root, out, video_dir=videos)
    assert [r['video'] for r in records_of(out, 'activitynet_train.json')] \
        == ['part1/v_aaa.webm', 'bbb.mp4']
    assert summaries(splits) == {'train': (2, 2), 'val_1': (1, 1)}
    (videos / 'bbb.mp4').unlink()
    splits = prepare_activitynet(root, out, video_dir=videos)
    assert summaries(splits) == {'train': (1, 1), 'val_1': (1, 1)}
    assert 'train: 1 videos not found' in capsys.readouterr().err
    assert len(records_of(out, 'activitynet_train.json')) == 1


# ------------------------------------------------------------------- DiDeMo


def make_didemo(root: Path) -> Path:
    root.mkdir(parents=True)

    def item(video, description, times):
        return dict(video=video, description=description, times=times,
                    num_segments=6, annotation_id=0, dl_link='')

    (root / 'train_data.json').write_text(json.dumps([
        item('1@N00_11_aa.m4v', 'a dog jumps. ', [[0, 0], [0, 1], [1, 1]]),
        item('2@N00_22_bb.mov', 'the  car turns', [[2, 3]]),
        item('1@N00_11_aa.m4v', 'the dog lands', [[4, 4], [4, 5]]),
        item('3@N00_33_cc.mp4', 'not in the list', [[0, 0]]),
    ]))
    (root / 'test_data.json').write_text(json.dumps([
        item('4@N00_44_dd.avi', 'someone waves, smiling', [[1, 2], [1, 1]]),
    ]))
    # collaborative-experts' list: CLIP4Clip keeps only the listed videos.
    (root / 'train_list.txt').write_text('1@N00_11_aa.m4v\n2@N00_22_bb.mov\n')
    return root


def test_didemo_paragraphs_cover_31_seconds_even_of_short_videos(tmp_path,
                                                                 clip):
    root, out = make_didemo(tmp_path / 'src'), tmp_path / 'ann'
    splits = prepare_didemo(root, out)
    assert summaries(splits) == {'train': (2, 2), 'test': (1, 1)}
    train = records_of(out, 'didemo_train.json')
    assert train == [
        dict(video='1@N00_11_aa.m4v', video_id='1@N00_11_aa.m4v', start=0,
             end=31, captions=['a dog jumps. the dog lands']),
        dict(video='2@N00_22_bb.mov', video_id='2@N00_22_bb.mov', start=0,
             end=31, captions=['the car turns'])]
    test = records_of(out, 'didemo_test.json')
    videos = tmp_path / 'videos'
    place_videos(clip, videos, train + test)
    check_dataset(out / 'didemo_train.json', videos)
    check_dataset(out / 'didemo_test.json', videos)
    # On the 2 s clip, 0..31 s reads the same frames as the whole video.
    whole = tmp_path / 'whole.json'
    whole.write_text(json.dumps([dict(video=test[0]['video'],
                                      captions=['x'])]))
    assert build(whole, videos, True)[0]['frame_inds'].tolist() == \
        build(out / 'didemo_test.json', videos, True)[0]['frame_inds'].tolist()


def test_didemo_sentence_level_uses_mean_annotator_chunks(tmp_path):
    root, out = make_didemo(tmp_path / 'src'), tmp_path / 'ann'
    prepare_didemo(root, out, sentence_level=True)
    records = records_of(out, 'didemo_train_sentences.json')
    assert [(r['video_id'], r['start'], r['end']) for r in records] == [
        ('1@N00_11_aa.m4v#0', 1 / 3 * 5, (2 / 3 + 1) * 5),
        ('2@N00_22_bb.mov#0', 10, 20),
        ('1@N00_11_aa.m4v#1', 20, 27.5)]


def test_didemo_video_dir_finds_aws_and_reencoded_names(tmp_path):
    root, out = make_didemo(tmp_path / 'src'), tmp_path / 'ann'
    videos = tmp_path / 'videos'
    videos.mkdir()
    (videos / '1@N00_11_aa.m4v.mp4').write_bytes(b'')  # AWS download
    (videos / '2@N00_22_bb.mp4').write_bytes(b'')  # re-encoded
    (videos / '4@N00_44_dd.avi').write_bytes(b'')  # as in the json
    prepare_didemo(root, out, video_dir=videos)
    assert [r['video'] for r in records_of(out, 'didemo_train.json')] == [
        '1@N00_11_aa.m4v.mp4', '2@N00_22_bb.mp4']
    assert records_of(out, 'didemo_test.json')[0]['video'] == \
        '4@N00_44_dd.avi'


# ------------------------------------------------------------------- errors

PREPARES = {
    'msrvtt': (make_msrvtt, prepare_msrvtt, 'MSRVTT_JSFUSION_test.csv'),
    'msvd': (make_msvd, prepare_msvd, 'raw-captions.pkl'),
    'lsmdc': (make_lsmdc, prepare_lsmdc, 'LSMDC16_annos_val.csv'),
    'activitynet': (make_activitynet, prepare_activitynet, 'val_1.json'),
    'didemo': (make_didemo, prepare_didemo, 'test_data.json'),
}


@pytest.mark.parametrize('dataset', PREPARES)
def test_missing_input_file_is_an_error_naming_it(tmp_path, dataset):
    make, prepare, filename = PREPARES[dataset]
    root = make(tmp_path / 'src')
    (root / filename).unlink()
    with pytest.raises(FileNotFoundError, match=filename):
        prepare(root, tmp_path / 'ann')
    assert not (tmp_path / 'ann').exists()


def where(path: Path) -> str:
    return re.escape(str(path))


def test_malformed_rows_name_file_and_row(tmp_path):
    root = make_lsmdc(tmp_path / 'lsmdc')
    path = root / 'LSMDC16_annos_val.csv'
    path.write_text(path.read_text() + 'only\tfive\tfields\there\tx\n')
    with pytest.raises(SourceFormatError,
                       match=rf'{where(path)}, line 2: expected 6'):
        prepare_lsmdc(root, tmp_path / 'ann')

    root = make_msrvtt(tmp_path / 'msrvtt')
    path = root / 'MSRVTT_train.7k.csv'
    write_csv(path, ['video_id'], [['video0'], ['video9']])
    with pytest.raises(SourceFormatError,
                       match=rf'{where(path)}, line 3: video video9 has no caption'):
        prepare_msrvtt(root, tmp_path / 'ann')
    write_csv(path, ['vid'], [['video0']])
    with pytest.raises(SourceFormatError, match=rf'{where(path)}: header'):
        prepare_msrvtt(root, tmp_path / 'ann')

    root = make_didemo(tmp_path / 'didemo')
    path = root / 'test_data.json'
    path.write_text(json.dumps([dict(video='a.mp4', description='  ',
                                     times=[[0, 0]])]))
    with pytest.raises(SourceFormatError,
                       match=rf'{where(path)}, item 0: empty caption'):
        prepare_didemo(root, tmp_path / 'ann')

    root = make_msvd(tmp_path / 'msvd')
    (root / 'val_list.txt').write_text('abc_1_9\nnot_there\n')
    with pytest.raises(SourceFormatError,
                       match=r'val_list.txt, line 2: video not_there'):
        prepare_msvd(root, tmp_path / 'ann')
    assert not (tmp_path / 'ann').exists()


def test_failure_while_writing_leaves_no_partial_files(tmp_path,
                                                       monkeypatch):
    root, out = make_msrvtt(tmp_path / 'src'), tmp_path / 'ann'
    out.mkdir()
    (out / 'msrvtt_train_9k.json').write_text('old')
    calls = []

    def fail_on_third(path):
        calls.append(path)
        if len(calls) == 3:
            raise AnnotationError(f'{path}: broken')
        return load_annotations(path)

    monkeypatch.setattr(common, 'load_annotations', fail_on_third)
    with pytest.raises(AnnotationError, match='test_1k'):
        prepare_msrvtt(root, out)
    assert [p.name for p in out.iterdir()] == ['msrvtt_train_9k.json']
    assert (out / 'msrvtt_train_9k.json').read_text() == 'old'


def test_cli_reports_errors_without_traceback(tmp_path, capsys, load_tool):
    root = make_msrvtt(tmp_path / 'src')
    (root / 'MSRVTT_data.json').unlink()
    cli = load_tool('tools/data/prepare_cli.py')
    status = cli.run_cli(prepare_msrvtt, root=root, out_dir=tmp_path)
    assert status == 1
    captured = capsys.readouterr()
    assert captured.out == ''
    assert captured.err.startswith('error: ')
    assert 'MSRVTT_data.json' in captured.err
