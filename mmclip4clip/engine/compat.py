"""Fixes that let mmengine 0.10.7 run on torch >= 2.6 and on CPU-only
distributed jobs."""
from __future__ import annotations

import os
import os.path as osp
import pickle
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.runner.checkpoint import CheckpointLoader

try:  # numpy >= 2
    from numpy._core import multiarray as np_multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as np_multiarray


def checkpoint_safe_types() -> list:
    """The non-tensor types mmengine writes into a training checkpoint:
    numpy scalars and arrays in the message hub's runtime information.

    mmengine's ``HistoryBuffer`` cannot be allow-listed (it pickles
    ``getattr`` references); :class:`SafeCheckpointHook` stores it as
    tensors instead.
    """
    numpy_dtypes = [type(np.dtype(name)) for name in (
        'float64', 'float32', 'float16', 'int64', 'int32', 'int16', 'int8',
        'uint8', 'bool')]
    return [
        np_multiarray._reconstruct,
        np_multiarray.scalar,
        np.ndarray,
        np.dtype,
        *numpy_dtypes,
    ]


def register_checkpoint_safe_types() -> None:
    """Allow-list mmengine's checkpoint types for ``torch.load``'s safe mode.

    torch >= 2.6 loads with ``weights_only=True``, which refuses any pickled
    global that is not allow-listed; mmengine 0.10.7 does not pass
    ``weights_only`` and so cannot resume. We allow exactly the types above
    and keep the safe mode on: a checkpoint holding any other object is
    still refused, since unpickling it could execute code.
    """
    torch.serialization.add_safe_globals(checkpoint_safe_types())


def load_from_local_safely(filename: str, map_location=None):
    """mmengine's loader for local checkpoint files, in torch's safe mode
    with a clear refusal.

    ``torch.load`` (``weights_only=True``) refuses a pickled object outside
    the allow-list with an ``UnpicklingError`` buried in a long message; we
    name the file and say why it was refused. The file is never unpickled
    unsafely.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} does not exist')
    try:
        return torch.load(filename, map_location=map_location,
                          weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names the refused global on a line of its long message.
        culprit = next((line.strip() for line in str(err).splitlines()
                        if 'Unsupported global' in line), 'see the cause')
        raise pickle.UnpicklingError(
            f'checkpoint {filename} was refused: it holds a pickled object '
            'outside the allow-listed types (tensors, containers, numpy '
            'scalars and arrays), and unpickling it could execute code. Load '
            'only checkpoints you trust, and re-save them as plain tensors '
            f'({culprit})') from err


def register_safe_checkpoint_loader() -> None:
    """Make mmengine read local checkpoints with
    :func:`load_from_local_safely`."""
    CheckpointLoader.register_scheme(prefixes='', force=True)(
        load_from_local_safely)


# How long a gloo process waits for its peers in a collective before the job
# ends (gloo's own default is 30 minutes, a silent wait for a hung peer).
# ``env_cfg.dist_cfg.timeout`` (seconds) overrides it.
CPU_COLLECTIVE_TIMEOUT_S = 300


def enable_cpu_distributed(cfg: Config) -> None:
    """Prepare a torchrun job for CPU-only machines (gloo backend).

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` and its DDP
    wrapper passes ``device_ids=[local_rank]``; both fail without CUDA. We
    start the gloo process group ourselves (the Runner then skips its own
    initialisation) and wrap the model with ``device_ids=None``. A
    collective waits at most ``env_cfg.dist_cfg.timeout`` seconds
    (:data:`CPU_COLLECTIVE_TIMEOUT_S` by default) for the other processes.
    On CUDA mmengine starts the process group with the same setting.
    """
    if torch.cuda.is_available():
        return
    dist_cfg = (cfg.get('env_cfg') or {}).get('dist_cfg') or {}
    timeout = dist_cfg.get('timeout') or CPU_COLLECTIVE_TIMEOUT_S
    if not dist.is_initialized():
        dist.init_process_group(
            backend='gloo', rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']),
            timeout=timedelta(seconds=timeout))
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
