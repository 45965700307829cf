"""Timing, peak memory and FLOP counting for the performance benchmark.

Times are medians over repeats after warm-up runs, with the device
synchronised around each run. Peak memory is what a piece of work adds on
top of what the process already held: on CUDA the allocator's peak, on the
CPU the process's resident-set high-water mark (``VmHWM``), which Linux lets
a process reset (``/proc/self/clear_refs``), so each measurement starts from
the memory held at its start (after handing freed heap memory back to the
system, so memory the work reuses from earlier work counts too).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from mmclip4clip.utils.memory import release_freed_heap


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device,
                   repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not found in /proc/self/status')


def resident_mib() -> float:
    """The process's resident set size now (``VmRSS``), MiB."""
    return _status_kib('VmRSS') / 1024


@dataclass
class PeakMemory:
    """Result of :func:`peak_memory`: MiB above the memory held at the start."""

    mib: float = float('nan')


@contextmanager
def peak_memory(device: torch.device):
    """Measure the peak memory a block adds (see the module docstring).

    Usage: ``with peak_memory(device) as peak: work()``, then ``peak.mib``.
    """
    peak = PeakMemory()
    if device.type == 'cuda':
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield peak
        synchronize(device)
        peak.mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return
    # Hand freed heap memory back first, so reused memory counts too.
    release_freed_heap()
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current resident set size
    base = _status_kib('VmRSS')
    yield peak
    peak.mib = (_status_kib('VmHWM') - base) / 1024


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` as counted by PyTorch's FLOP counter
    (matrix products, convolutions and attention; elementwise work is not
    counted)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak_flops(device: torch.device, size: int = 4096,
                      repeats: int = 5) -> float:
    """The machine's own large fp32 matrix-product throughput (FLOP/s): the
    best of ``repeats`` products of two ``size`` x ``size`` matrices."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = float('inf')
    a @ b
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best
