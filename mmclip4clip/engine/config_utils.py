"""Config handling shared by ``tools/train.py`` and ``tools/test.py``."""
from __future__ import annotations

import os.path as osp
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mmengine.config import Config

from mmclip4clip.engine.cfg_options import (
    ConfigOptionError,
    check_cfg_options,
    check_settings,
)
from mmclip4clip.engine.compat import enable_cpu_distributed
from mmclip4clip.utils.config import type_name

__all__ = ['ConfigOptionError', 'apply_common_args', 'finish_distributed',
           'merge_cfg_options', 'naming_absent_ranks']


def merge_cfg_options(cfg: Config, options: dict | None) -> None:
    """Merge ``--cfg-options`` into ``cfg`` after checking every key and
    value (:func:`check_cfg_options`), then range-check the loop and loader
    settings of the result (:func:`check_settings`).

    Raises:
        ConfigOptionError: naming the key, before anything is built.
    """
    if options:
        check_cfg_options(cfg, options)
        old_weights = (cfg.model.get('backbone') or {}).get('pretrained') \
            if 'model' in cfg else None
        cfg.merge_from_dict(options)
        if 'model.backbone.pretrained' in options and not any(
                key.endswith('.tokenizer') for key in options):
            _tokenizers_follow_weights([cfg[key] for key in cfg.keys()],
                                       old_weights,
                                       options['model.backbone.pretrained'])
    check_settings(cfg)


def _tokenizers_follow_weights(node, old: str | None, new: str) -> None:
    """Point every ``TokenizeCaptions`` that loaded from the old CLIP
    weights location at the new one.

    The configs load CLIP's tokenizer from the weights' directory or hub id
    (``clip_pretrained``), so ``--cfg-options model.backbone.pretrained=DIR``
    alone would leave the tokenizer on the hub (and need the network).
    """
    if old is None:
        return
    if isinstance(node, dict):
        if type_name(node) == 'TokenizeCaptions' and \
                node.get('tokenizer') == old:
            node['tokenizer'] = new
        children = node.values()
    elif isinstance(node, (list, tuple)):
        children = node
    else:
        return
    for child in children:
        _tokenizers_follow_weights(child, old, new)


def apply_common_args(cfg: Config, config_path: str, work_dir: str | None,
                      launcher: str) -> None:
    """Work dir (default ``work_dirs/<config name>``) and launcher, shared by
    ``tools/train.py`` and ``tools/test.py``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])
    cfg.launcher = launcher
    if launcher != 'none':
        enable_cpu_distributed(cfg)


def finish_distributed() -> None:
    """Wait for every process, then close the process group.

    Without this, a gloo process that finishes first can abort at exit
    ("terminate called without an active exception") while another still
    saves its last checkpoint, and torchrun reports the job as failed.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# Store keys by which the processes whose collective timed out say so.
_TIMED_OUT_KEY = 'mmclip4clip/collective_timed_out/rank{}'
# How long a process whose collective timed out waits for the others to say
# that theirs did too (their waits started at slightly different times).
_REPORT_GRACE_S = 10.0


def _ranks_that_did_not_report(rank: int, world_size: int) -> list[int] | None:
    """Say through the rendezvous store that this rank's collective timed
    out, and return the ranks that have not said so within the grace
    period: those were not in the collective. None if the store cannot be
    reached."""
    from torch.distributed import distributed_c10d

    try:
        store = distributed_c10d._get_default_store()
        store.set(_TIMED_OUT_KEY.format(rank), '1')
        deadline = time.monotonic() + _REPORT_GRACE_S
        while True:
            absent = [r for r in range(world_size)
                      if not store.check([_TIMED_OUT_KEY.format(r)])]
            if not absent or time.monotonic() > deadline:
                return absent
            time.sleep(0.2)
    except (RuntimeError, ValueError):
        return None


def _is_collective_timeout(err: RuntimeError) -> bool:
    """gloo's timeout (``Timed out waiting 300000ms for recv operation``),
    the error of a later operation on the connection it closed, or a
    ``torch.distributed`` error that says it timed out."""
    import torch.distributed as dist

    text = str(err).lower()
    return ('timed out waiting' in text
            or 'application timeout caused pair closure' in text
            or (isinstance(err, dist.DistError) and 'time' in text))


@contextmanager
def naming_absent_ranks() -> Iterator[None]:
    """Turn a collective timeout of a distributed run into an error that
    names the ranks that did not take part.

    gloo's timeout names only an operation (``Timed out waiting 300000ms for
    recv``), and ``monitored_barrier`` cannot run afterwards (the timeout
    closes the connection). Every process whose collective times out
    records so in the rendezvous store; a rank that has not done so within
    a few seconds was not in the collective: stopped, hung, dead or busy
    elsewhere.
    """
    import torch.distributed as dist

    try:
        yield
    except RuntimeError as err:
        if not (dist.is_available() and dist.is_initialized()
                and _is_collective_timeout(err)):
            raise
        rank, world_size = dist.get_rank(), dist.get_world_size()
        absent = _ranks_that_did_not_report(rank, world_size)
        if absent is None:
            who = ('the rendezvous store could not be reached to tell which '
                   'rank was missing')
        elif absent:
            who = (f'rank(s) {", ".join(map(str, absent))} of {world_size} '
                   'did not take part (stopped, hung, dead or busy elsewhere '
                   'for longer than the timeout)')
        else:
            who = ('every rank timed out, each waiting in a collective the '
                   'others did not enter')
        raise RuntimeError(
            f'rank {rank}: a collective operation timed out '
            f'(env_cfg.dist_cfg.timeout): {who}') from err
