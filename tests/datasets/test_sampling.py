"""Frame selection of CLIP4Clip (docs/data_preparation.md#frame-sampling)
against the original's OpenCV reading loop (``reference`` fixture in
conftest.py)."""
import itertools

import numpy as np
import pytest
from mmengine.registry import DefaultScope

import mmclip4clip  # noqa: F401  (registers the transforms)
from mmclip4clip.datasets.transforms import (
    SampleFramesByRate,
    order_frames,
    sample_frame_indices,
    slice_frames,
)
from mmclip4clip.registry import TRANSFORMS

FRAME_RATES = (25, 29.97, 30, 10, 3, 59.94, 1)
FEATURE_RATES = (1, 2, 3)
FRAME_COUNTS = (1, 2, 3, 9, 10, 11, 24, 25, 26, 29, 30, 31, 59, 60, 61,
                89, 90, 91, 100, 149, 150, 151, 301, 1000)


def sample(total_frames, avg_fps, max_frames=12, feature_framerate=1,
           slice_framepos=2, frame_order=0, start=None, end=None):
    """Run the transform on a results dict as AVInit leaves it."""
    results = dict(total_frames=total_frames, avg_fps=avg_fps)
    if start is not None:
        results.update(start=start, end=end)
    transform = SampleFramesByRate(max_frames=max_frames,
                                   feature_framerate=feature_framerate,
                                   slice_framepos=slice_framepos,
                                   frame_order=frame_order)
    return transform(results)


@pytest.mark.parametrize('feature_framerate', FEATURE_RATES)
@pytest.mark.parametrize('avg_fps', FRAME_RATES)
def test_whole_video_indices_equal_reference_loop(reference, avg_fps,
                                                  feature_framerate):
    loop, _ = reference
    for total_frames in FRAME_COUNTS:
        inds = sample_frame_indices(total_frames, avg_fps, feature_framerate)
        expected = loop(total_frames, avg_fps, feature_framerate)
        assert inds.tolist() == expected, (total_frames, avg_fps,
                                           feature_framerate)
        assert inds.dtype == np.int64


@pytest.mark.parametrize('feature_framerate', FEATURE_RATES)
@pytest.mark.parametrize('avg_fps', FRAME_RATES)
def test_integer_segment_indices_equal_reference_loop(reference, avg_fps,
                                                      feature_framerate):
    loop, _ = reference
    for total_frames in (30, 91, 150, 301, 1000):
        # Segments inside the video, touching its end and beyond it.
        for start, end in itertools.combinations(range(0, 14, 2), 2):
            inds = sample_frame_indices(total_frames, avg_fps,
                                        feature_framerate, start, end)
            expected = loop(total_frames, avg_fps, feature_framerate, start,
                            end)
            assert inds.tolist() == expected, (total_frames, avg_fps,
                                               feature_framerate, start, end)


@pytest.mark.parametrize('feature_framerate', FEATURE_RATES)
@pytest.mark.parametrize('avg_fps', FRAME_RATES)
def test_float_segment_indices_equal_reference_loop(reference, avg_fps,
                                                    feature_framerate):
    loop, _ = reference
    rng = np.random.default_rng(int(avg_fps * 100) + feature_framerate)
    for _ in range(60):
        total_frames = int(rng.integers(1, 1200))
        start = float(np.round(rng.uniform(0, 40), 2))
        end = float(np.round(start + rng.uniform(0.01, 40), 2))
        inds = sample_frame_indices(total_frames, avg_fps, feature_framerate,
                                    start, end)
        expected = loop(total_frames, avg_fps, feature_framerate, start, end)
        assert inds.tolist() == expected, (total_frames, avg_fps,
                                           feature_framerate, start, end)


def test_end_beyond_duration_is_clipped_to_duration(reference):
    loop, _ = reference
    # 10 s at 25 fps: duration 10 s, seconds 3..10 read, the last is past
    # the end of the video.
    inds = sample_frame_indices(250, 25, 1, 3, 1000)
    assert inds.tolist() == loop(250, 25, 1, 3, 1000)
    assert inds.tolist() == [75, 100, 125, 150, 175, 200, 225]
    assert np.array_equal(inds, sample_frame_indices(250, 25, 1, 3, 10))


def test_fractional_frame_rate_is_truncated(reference):
    loop, _ = reference
    # 29.97 fps counts as 29: 2 frames a second at offsets 0 and 14.
    inds = sample_frame_indices(70, 29.97, 2)
    assert inds.tolist() == [0, 14, 29, 43, 58] == loop(70, 29.97, 2)


def test_feature_framerate_above_frame_rate_takes_every_frame(reference):
    loop, _ = reference
    inds = sample_frame_indices(10, 3, 5)
    assert inds.tolist() == list(range(10)) == loop(10, 3, 5)


def test_indices_increase_and_stay_inside_the_video():
    for total_frames, avg_fps, rate in itertools.product(
            FRAME_COUNTS, FRAME_RATES, FEATURE_RATES):
        inds = sample_frame_indices(total_frames, avg_fps, rate)
        assert len(inds) > 0
        assert inds[0] == 0 and inds[-1] < total_frames
        assert np.all(np.diff(inds) > 0)


@pytest.mark.parametrize('slice_framepos', (0, 1, 2))
def test_short_video_keeps_all_frames_for_each_slice_framepos(
        reference, slice_framepos):
    loop, _ = reference
    # 5 s at 25 fps, 1 frame a second: 5 frames < 12.
    results = sample(125, 25, max_frames=12, slice_framepos=slice_framepos)
    assert results['frame_inds'].tolist() == loop(125, 25, 1)
    assert results['frame_inds'].tolist() == [0, 25, 50, 75, 100]
    assert results['max_frames'] == 12


@pytest.mark.parametrize('slice_framepos, expected', [
    (0, [0, 25, 50, 75, 100, 125, 150, 175, 200, 225, 250, 275]),
    (1, [200, 225, 250, 275, 300, 325, 350, 375, 400, 425, 450, 475]),
    (2, [0, 25, 75, 125, 150, 200, 250, 300, 325, 375, 425, 475]),
])
def test_long_video_slice_framepos_keeps_expected_indices(
        reference, slice_framepos, expected):
    loop, select = reference
    # 20 s at 25 fps: 20 frames read at 1 fps, 12 kept.
    results = sample(500, 25, max_frames=12, slice_framepos=slice_framepos)
    assert results['frame_inds'].tolist() == expected
    assert expected == select(loop(500, 25, 1), 12, slice_framepos)


@pytest.mark.parametrize('slice_framepos', (0, 1, 2))
def test_transform_equals_reference_for_many_videos(reference,
                                                    slice_framepos):
    loop, select = reference
    for total_frames, avg_fps, rate in itertools.product(
            FRAME_COUNTS, FRAME_RATES, FEATURE_RATES):
        for max_frames in (1, 5, 12):
            results = sample(total_frames, avg_fps, max_frames, rate,
                             slice_framepos)
            expected = select(loop(total_frames, avg_fps, rate), max_frames,
                              slice_framepos)
            assert results['frame_inds'].tolist() == expected


def test_slice_frames_uniform_uses_floor_of_linspace():
    inds = np.arange(100, 107)  # 7 frames -> 4
    # linspace(0, 6, 4) = 0, 2, 4, 6
    assert slice_frames(inds, 4, 2).tolist() == [100, 102, 104, 106]
    # linspace(0, 6, 5) = 0, 1.5, 3, 4.5, 6 -> floors 0, 1, 3, 4, 6
    assert slice_frames(inds, 5, 2).tolist() == [100, 101, 103, 104, 106]


def test_frame_order_1_reverses():
    results = sample(500, 25, max_frames=12, slice_framepos=2, frame_order=1)
    forward = sample(500, 25, max_frames=12, slice_framepos=2)
    assert results['frame_inds'].tolist() == \
        forward['frame_inds'].tolist()[::-1]
    # Short video: reversed too.
    short = sample(125, 25, frame_order=1)
    assert short['frame_inds'].tolist() == [100, 75, 50, 25, 0]


def test_frame_order_2_is_a_permutation():
    forward = sample(500, 25, max_frames=12)['frame_inds']
    orders = set()
    for seed in range(5):
        np.random.seed(seed)
        shuffled = sample(500, 25, max_frames=12, frame_order=2)['frame_inds']
        assert sorted(shuffled.tolist()) == forward.tolist()
        orders.add(tuple(shuffled.tolist()))
    assert len(orders) > 1
    rng = np.random.default_rng(0)
    shuffled = order_frames(forward, 2, rng)
    assert sorted(shuffled.tolist()) == forward.tolist()
    assert shuffled.tolist() != forward.tolist()


def test_order_frames_0_keeps_order():
    inds = np.array([3, 1, 2])
    assert order_frames(inds, 0).tolist() == [3, 1, 2]


def test_segment_past_the_end_raises_value_error(reference):
    loop, _ = reference
    # 4 s video, segment 10..20 s: nothing to read.
    assert loop(100, 25, 1, 10, 20) == []
    assert len(sample_frame_indices(100, 25, 1, 10, 20)) == 0
    with pytest.raises(ValueError, match='no frame'):
        sample(100, 25, start=10, end=20)


def test_empty_video_raises_value_error():
    with pytest.raises(ValueError):
        sample(0, 25)


@pytest.mark.parametrize('kwargs', [
    dict(slice_framepos=3),
    dict(slice_framepos=-1),
    dict(frame_order=3),
    dict(frame_order=-1),
])
def test_invalid_slice_framepos_or_frame_order_raise(kwargs):
    with pytest.raises(ValueError):
        SampleFramesByRate(**kwargs)


def test_invalid_modes_raise_in_functions():
    inds = np.arange(20)
    with pytest.raises(ValueError):
        slice_frames(inds, 5, 3)
    with pytest.raises(ValueError):
        order_frames(inds, 5)


def test_invalid_rates_raise():
    with pytest.raises(ValueError):
        sample_frame_indices(100, 0.5, 1)
    with pytest.raises(ValueError):
        sample_frame_indices(100, 25, 0)


def test_transform_is_registered_and_builds_from_config():
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        transform = TRANSFORMS.build(dict(type='SampleFramesByRate',
                                          max_frames=4, feature_framerate=2,
                                          slice_framepos=0))
    assert isinstance(transform, SampleFramesByRate)
    results = transform(dict(total_frames=100, avg_fps=10))
    assert results['frame_inds'].tolist() == [0, 5, 10, 15]
    assert results['max_frames'] == 4
    assert 'max_frames=4' in repr(transform)
