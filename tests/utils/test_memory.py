"""release_freed_heap: glibc's malloc_trim where there is one, a no-op
elsewhere."""
import ctypes

from mmclip4clip.utils import memory


def test_releases_through_glibc_here():
    # The test machines run glibc (Debian).
    assert ctypes.CDLL('libc.so.6').malloc_trim is not None
    assert memory.release_freed_heap() is True


def test_does_nothing_without_malloc_trim(monkeypatch):
    monkeypatch.setattr(memory, '_malloc_trim', lambda: None)
    assert memory.release_freed_heap() is False
