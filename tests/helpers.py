"""Helpers that test modules import by name: ``from helpers import ...``.

``tests/`` is on ``sys.path`` (tests/conftest.py puts it there), and the
processes that ``torch.multiprocessing`` spawns start with their parent's
``sys.path``, so worker processes import this module too (they cannot
import a ``conftest``: each test folder has its own, under the same name).
"""
from __future__ import annotations

import copy
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

# CLIP's vocabulary puts start-of-text and end-of-text last, so the end token
# has the largest id and ``argmax(ids)`` finds it; 0 pads.
PAD, BOS, EOT = 0, 62, 63
MAX_WORD_ID = BOS - 1

REPO = Path(__file__).resolve().parents[1]
# The tiny model of the synthetic dataset (its tokenizer path is relative to
# a workspace, tests/conftest.py's make_workspace).
SYNTHETIC_CONFIG = REPO / ('configs/retrieval/clip4clip/clip4clip_tiny-p4-'
                           'res32-scratch_1xb32-u8-30e_synthetic-rgb.py')
# The search server tests' index (tests/tools/conftest.py): this many
# synthetic clips, and one more under a file name that is HTML, which pages
# must show as text.
WEB_INDEX_CLIPS = 12
EVIL_VIDEO_NAME = '<img src=x onerror=alert(1)>.mp4'

# A CLIP small enough to run forward and backward in milliseconds: 16 px
# frames in 4 px patches, 2 layers of width 32 in each tower.
TINY_CLIP = dict(
    projection_dim=32,
    text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=2,
                     max_position_embeddings=16, pad_token_id=PAD,
                     bos_token_id=BOS, eos_token_id=EOT),
    vision_config=dict(image_size=16, patch_size=4, hidden_size=32,
                       intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2),
)


def tiny_clip_config() -> dict:
    """A fresh copy of :data:`TINY_CLIP` (callers may edit it)."""
    return copy.deepcopy(TINY_CLIP)


def write_clip_dir(out: Path, config: dict | None = None,
                   seed: int = 0) -> Path:
    """A Hugging Face directory of random CLIP weights (``config``, default
    :data:`TINY_CLIP`) at ``out``, as ``CLIPBackbone(pretrained=out)``
    loads it; returns ``out``."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    with torch.random.fork_rng():  # the caller's random state is left alone
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(**(config or TINY_CLIP)))
    model.save_pretrained(str(out))
    return out


def save_fixed_model(path: Path, config: Path = SYNTHETIC_CONFIG) -> Path:
    """``config``'s model with weights drawn from seed 0, saved at ``path``
    as tools/train.py saves its checkpoints (``meta`` + ``state_dict``)."""
    import torch
    from mmengine.config import Config

    from mmclip4clip.apis import init_retriever

    torch.manual_seed(0)
    model = init_retriever(Config.fromfile(str(config)))
    torch.save(dict(meta=dict(seed=0, epoch=0), state_dict=model.state_dict()),
               path)
    return path


def free_port() -> int:
    """A TCP port nobody listens on just now."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_gloo(worker: Callable[..., None], *args,
             world_size: int = 2) -> None:
    """Run ``worker(rank, world_size, *args)`` in ``world_size`` spawned
    processes joined in a gloo process group (on a free local port, 60 s
    collective timeout, one torch thread each: they share the machine).

    ``worker`` and ``args`` must pickle: a module-level function of a test
    module. Raises when a process fails.
    """
    import torch.multiprocessing as mp

    mp.spawn(_gloo_process, args=(worker, world_size, free_port(), args),
             nprocs=world_size, join=True)


def _gloo_process(rank: int, worker: Callable[..., None], world_size: int,
                  port: int, args: tuple) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ['MASTER_ADDR'] = '127.0.0.1'
    os.environ['MASTER_PORT'] = str(port)
    dist.init_process_group('gloo', rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))
    try:
        worker(rank, world_size, *args)
    finally:
        dist.destroy_process_group()
