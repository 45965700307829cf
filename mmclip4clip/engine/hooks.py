"""Hooks of the mmclip4clip scope."""
from __future__ import annotations

import os.path as osp
import random

import numpy as np
import torch
from mmengine.dist import get_world_size, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import HistoryBuffer

from mmclip4clip.registry import HOOKS
from mmclip4clip.utils.fileio import atomic_write

# Marks a HistoryBuffer stored as plain tensors in a checkpoint.
_BUFFER_KEY = '__history_buffer__'
_RNG_KEY = 'rng_state'


def rng_state() -> dict:
    """torch / numpy / Python generator states as tensors and plain values
    (so torch's safe loading accepts them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = dict(
        torch=torch.get_rng_state(),
        numpy=(kind, torch.from_numpy(keys.astype('int64')), pos, has_gauss,
               gauss),
        python=(version, torch.tensor(internal, dtype=torch.int64),
                gauss_next))
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state['torch'])
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos,
                         has_gauss, gauss))
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal.tolist()), gauss_next))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


@HOOKS.register_module()
class SafeCheckpointHook(Hook):
    """Makes checkpoints safe to load and resume exactly.

    1. Stores the message hub's log buffers as plain tensors.

    mmengine pickles its ``HistoryBuffer`` objects together with references
    to their statistics methods (``getattr(HistoryBuffer, 'mean')``), which
    torch's safe loading (``weights_only=True``, the default since torch 2.6)
    must refuse: allowing ``getattr`` would allow arbitrary code. This hook
    replaces each buffer by a dict of tensors before a checkpoint is written
    and rebuilds the buffers after one is read, before the Runner restores
    the message hub.

    2. Stores numpy scalars of the runtime information (e.g. the timer's
    ``eta``) as Python numbers, so that a checkpoint loads with plain
    ``torch.load`` in safe mode, without the plugin's allow-list.

    3. Stores the torch, numpy, Python (and CUDA) random generator states,
    which mmengine does not save, and restores them on ``--resume`` (not on
    ``load_from``), so dropout and random frame orders continue as in an
    uninterrupted run. A checkpoint holds rank 0's states: with
    ``randomness.diff_rank_seed`` on several processes they are not
    restored (a warning says so).
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[_RNG_KEY] = rng_state()
        info = checkpoint.get('message_hub', {}).get('runtime_info', {})
        for key, value in info.items():
            if isinstance(value, np.generic):
                info[key] = value.item()
        scalars = checkpoint.get('message_hub', {}).get('log_scalars', {})
        for key, buffer in scalars.items():
            if isinstance(buffer, HistoryBuffer):
                log, count = buffer.data
                scalars[key] = {
                    _BUFFER_KEY: True,
                    'log_history': torch.from_numpy(log.astype('float64')),
                    'count_history': torch.from_numpy(count.astype('int64')),
                    'max_length': buffer.max_length,
                }

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get(_RNG_KEY)
        if state is not None and getattr(runner, '_resume', False):
            per_rank = (runner._randomness_cfg or {}).get('diff_rank_seed')
            if get_world_size() > 1 and per_rank:
                runner.logger.warning(
                    'not restoring random generator states: the checkpoint '
                    'holds rank 0\'s and diff_rank_seed is on')
            else:
                set_rng_state(state)
        scalars = checkpoint.get('message_hub', {}).get('log_scalars', {})
        for key, value in scalars.items():
            if isinstance(value, dict) and value.get(_BUFFER_KEY):
                scalars[key] = HistoryBuffer(
                    value['log_history'].tolist(),
                    value['count_history'].tolist(), value['max_length'])


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` that never leaves a partial file.

    The checkpoint itself is written whole by
    :class:`~mmclip4clip.engine.runner.CLIP4ClipRunner`; this hook replaces
    the work dir's ``last_checkpoint`` pointer whole too (mmengine truncates
    and rewrites it, so a full disk leaves it empty), and removes the
    checkpoint that ``max_keep_ckpts`` drops only after the new one is
    saved (mmengine removes it first, so a failed save leaves one fewer).
    Arguments are those of ``CheckpointHook``.
    """

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        dropped = None
        if self.max_keep_ckpts > 0 and (not self.keep_ckpt_ids
                                        or self.keep_ckpt_ids[-1] != step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                dropped = self.keep_ckpt_ids[0]
            self.keep_ckpt_ids.append(step)  # the deque drops the oldest
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, filename, self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler, meta=meta,
            by_epoch=self.by_epoch, backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        with atomic_write(osp.join(runner.work_dir, 'last_checkpoint'),
                          'w') as f:
            f.write(self.last_ckpt)
        if dropped is not None:
            old = self.file_backend.join_path(
                self.out_dir, self.filename_tmpl.format(dropped))
            if self.file_backend.isfile(old):
                self.file_backend.remove(old)
            elif self.file_backend.isdir(old):  # deepspeed saves folders
                self.file_backend.rmtree(old)
