"""find_videos: the one rule for which files under a folder are videos
(compress_videos and the video index both list with it)."""
import os

from mmclip4clip.datasets.video_files import find_videos


def test_videos_by_extension_any_case_hidden_files_and_folders_skipped(
        tmp_path):
    for rel in ('b.mp4', 'a/Clip.MKV', 'a-c/d.webm', 'notes.txt', 'a/x.mp4.part',
                '._b.mp4', '.cache/e.mp4', 'a/.f.mp4.123.abcd.tmp',
                'a/.g.mp4'):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b'')
    os.symlink(tmp_path / 'a', tmp_path / 'linked_folder')
    os.symlink(tmp_path / 'b.mp4', tmp_path / 'a' / 'linked.mp4')
    found = find_videos(tmp_path)
    assert all(path.parent == tmp_path or tmp_path in path.parents
               for path in found)
    # Sorted by relative POSIX path ('a-c' < 'a/' as strings).
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        'a-c/d.webm', 'a/Clip.MKV', 'a/linked.mp4', 'b.mp4']
    assert [p.name for p in find_videos(tmp_path, ('.webm', ))] == ['d.webm']
