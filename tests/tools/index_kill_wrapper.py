"""Run tools/index_videos.py counting the videos it encodes, and SIGKILL it
once it has encoded a given number (a killed indexing job).

    python index_kill_wrapper.py COUNT_FILE KILL_AFTER TOOL [tool args]

Each call of ``encode_videos`` by the index appends its number of videos to
COUNT_FILE (one line per call, across runs). When the running total of
this process reaches KILL_AFTER (0: never), the process kills itself with
SIGKILL right after that call returns, before the index can commit what it
encoded: no ``finally``, ``atexit`` or cleanup runs, as when a job is
killed by the scheduler or the OOM killer.
"""
import os
import runpy
import signal
import sys

import mmclip4clip.apis.index as index_module

count_file, kill_after, tool = sys.argv[1], int(sys.argv[2]), sys.argv[3]
real_encode_videos = index_module.encode_videos
encoded_here = 0


def counting_encode_videos(model, cfg, paths, *args, **kwargs):
    global encoded_here
    result = real_encode_videos(model, cfg, paths, *args, **kwargs)
    with open(count_file, 'a') as f:
        f.write(f'{len(paths)}\n')
    encoded_here += len(paths)
    if kill_after and encoded_here >= kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    return result


index_module.encode_videos = counting_encode_videos
sys.argv = [tool, *sys.argv[4:]]
runpy.run_path(tool, run_name='__main__')
