"""A distributed CPU run whose peer is frozen ends with an error naming the
frozen rank, within ``env_cfg.dist_cfg.timeout`` plus a few seconds (it used
to wait silently for gloo's default 30 minutes).

Two processes are started as torchrun starts them (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT); both go through ``enable_cpu_distributed`` and
``naming_absent_ranks`` as tools/train.py does. After one all-reduce, rank 1
stops itself with SIGSTOP and rank 0 enters a second one.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 5

WORKER = f'''
import os, signal, time
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmclip4clip.engine.compat import enable_cpu_distributed
from mmclip4clip.engine.config_utils import naming_absent_ranks

cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='nccl',
                                             timeout={TIMEOUT_S}))))
enable_cpu_distributed(cfg)
with naming_absent_ranks():
    tensor = torch.ones(1)
    dist.all_reduce(tensor)
    print('rank', dist.get_rank(), 'joined at', time.time(), flush=True)
    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    dist.all_reduce(tensor)
'''


def test_frozen_peer_ends_the_job_naming_its_rank(tmp_path, free_port):
    script = tmp_path / 'worker.py'
    script.write_text(WORKER)
    port = str(free_port())
    procs = []
    try:
        for rank in range(2):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank),
                       WORLD_SIZE='2', MASTER_ADDR='127.0.0.1',
                       MASTER_PORT=port, PYTHONPATH=os.pathsep.join(filter(
                           None, [str(REPO), os.environ.get('PYTHONPATH')])))
            procs.append(subprocess.Popen(
                [sys.executable, str(script)], env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        # Imports take a while on a busy machine; then the timeout, the grace
        # period for the other ranks to report (10 s) and the exit.
        out, err = procs[0].communicate(timeout=120)
        ended = time.time()
        assert 'rank 0 joined at' in out, err[-3000:]
        waited = ended - float(out.split('joined at')[1].split()[0])
        assert procs[0].returncode != 0
        assert 'rank 0: a collective operation timed out' in err, err[-3000:]
        assert 'rank(s) 1 of 2 did not take part' in err
        # The timeout, the 10 s grace for other ranks to report, the exit.
        assert TIMEOUT_S <= waited < TIMEOUT_S + 10 + 15, waited
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
