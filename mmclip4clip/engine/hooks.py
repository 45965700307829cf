"""Hooks of the mmclip4clip scope."""
from __future__ import annotations

import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer

from mmclip4clip.registry import HOOKS

# Marks a HistoryBuffer stored as plain tensors in a checkpoint.
_BUFFER_KEY = '__history_buffer__'


@HOOKS.register_module()
class SafeCheckpointHook(Hook):
    """Stores the message hub's log buffers as plain tensors in checkpoints.

    mmengine pickles its ``HistoryBuffer`` objects together with references
    to their statistics methods (``getattr(HistoryBuffer, 'mean')``), which
    torch's safe loading (``weights_only=True``, the default since torch 2.6)
    must refuse: allowing ``getattr`` would allow arbitrary code. This hook
    replaces each buffer by a dict of tensors before a checkpoint is written
    and rebuilds the buffers after one is read, before the Runner restores
    the message hub.
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
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
        scalars = checkpoint.get('message_hub', {}).get('log_scalars', {})
        for key, value in scalars.items():
            if isinstance(value, dict) and value.get(_BUFFER_KEY):
                scalars[key] = HistoryBuffer(
                    value['log_history'].tolist(),
                    value['count_history'].tolist(), value['max_length'])
