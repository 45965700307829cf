"""Run one job per file in worker processes, with a progress bar.

Not ``mmengine.utils.track_parallel_progress``: its ``multiprocessing.Pool``
waits forever for the result of a worker that died (a video decoder can
crash the whole process on a damaged file), it always starts a pool and
always draws a bar on stdout, where the data tools print their report.
Here a dead worker is an error (or, with ``on_crash``, a result for each
file it left unfinished), one worker runs in this process, and the bar is on
stderr, only when asked for.
"""
from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

Item = TypeVar('Item')
Result = TypeVar('Result')


def map_in_processes(job: Callable[[Item], Result], items: Sequence[Item],
                     workers: int = 1, progress: str | None = None,
                     on_crash: Callable[[Item, Exception], Result] | None = None
                     ) -> list[Result]:
    """``[job(item) for item in items]``, in the order of ``items``, run by
    ``workers`` forked processes (in this process when ``workers <= 1`` or
    there is one item).

    ``job`` is expected to return its own per-item failures as values, so
    that one bad file does not stop the others. An exception that reaches
    here (a worker that died breaks the pool: every unfinished item gets
    one) is raised, or turned into that item's result by ``on_crash(item,
    error)``. ``progress``: a line printed on stderr above a progress bar
    (None: silent).
    """
    results: list = [None] * len(items)
    bar = None
    if progress is not None and items:
        from mmengine.utils import ProgressBar
        print(progress, file=sys.stderr)
        bar = ProgressBar(len(items), file=sys.stderr)
    if workers <= 1 or len(items) <= 1:
        for index, item in enumerate(items):
            results[index] = job(item)
            if bar is not None:
                bar.update()
    else:
        # fork: workers start at once, without importing the package again.
        method = 'fork' if 'fork' in multiprocessing.get_all_start_methods() \
            else None
        with ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context(method)) as pool:
            futures = {pool.submit(job, item): index
                       for index, item in enumerate(items)}
            for future in as_completed(futures):
                index = futures[future]
                try:
                    results[index] = future.result()
                except Exception as err:
                    if on_crash is None:
                        raise
                    results[index] = on_crash(items[index], err)
                if bar is not None:
                    bar.update()
    if bar is not None:
        sys.stderr.write('\n')
    return results
