"""map_in_processes: results in the order of the items whatever the order
they finish in, and a worker that dies is never a silently missing result."""
import os
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from mmclip4clip.utils.parallel import map_in_processes


def square_later(n: int) -> int:
    time.sleep(0.05 * (4 - n % 4))  # the first items finish last
    return n * n


def die_on_three(n: int) -> int:
    if n == 3:
        os._exit(1)  # as a decoder crash kills its process
    return n


@pytest.mark.parametrize('workers', [1, 3])
def test_results_keep_the_order_of_the_items(workers, capsys):
    assert map_in_processes(square_later, range(8), workers) == [
        n * n for n in range(8)]
    assert capsys.readouterr().err == ''  # no progress unless asked


def test_progress_goes_to_stderr_not_stdout(capsys):
    map_in_processes(square_later, [1, 2], 1, progress='Squaring 2 numbers')
    captured = capsys.readouterr()
    assert captured.out == ''
    assert 'Squaring 2 numbers' in captured.err


def test_a_dead_worker_is_an_error_or_a_result_for_each_lost_item():
    with pytest.raises(BrokenProcessPool):
        map_in_processes(die_on_three, range(6), workers=2)
    results = map_in_processes(die_on_three, range(6), workers=2,
                               on_crash=lambda n, err: f'lost {n}')
    assert len(results) == 6 and results[3] == 'lost 3'
    # The others either finished or are reported, none is dropped.
    assert all(r == n or r == f'lost {n}' for n, r in enumerate(results))
