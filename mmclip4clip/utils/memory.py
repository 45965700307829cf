"""Handing freed CPU heap memory back to the system."""
from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on a C library without it (musl,
    macOS)."""
    try:
        return ctypes.CDLL('libc.so.6').malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_heap() -> bool:
    """Return the CPU heap memory freed since the last call to the system;
    False where the C library cannot (then nothing happens).

    glibc keeps freed blocks below its mmap threshold (which rises to 32 MiB
    as large tensors are freed) resident for reuse; when the next tensors
    do not fit those holes, the process grows past what it holds alive.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
