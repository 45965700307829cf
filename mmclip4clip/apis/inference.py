"""Build a retriever from a config (and checkpoint) for use from Python."""
from __future__ import annotations

from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmclip4clip.engine.checkpoint_io import (
    load_checkpoint_file,
    load_weights,
    state_dict_of,
)
from mmclip4clip.registry import MODELS


def init_retriever(config: str | Path | Config | dict,
                   checkpoint: str | Path | None = None,
                   device: str | torch.device = 'cpu'):
    """A :class:`CLIP4Clip` model in eval mode on ``device``.

    Args:
        config: a config file, a :class:`mmengine.Config`, or a dict; only
            its ``model`` entry is used.
        checkpoint: an mmengine checkpoint (``tools/train.py`` output or
            ``tools/convert_checkpoint.py``'s ``model.pth``), read in torch's
            safe mode; its weights must be exactly the model's (a missing,
            unused or reshaped tensor is a ``CheckpointMismatchError``).
            None keeps the config's weights (e.g. a ``pretrained`` CLIP).
        device: where the model runs.

    Scores come from ``model.sim_matrix(input_ids, attention_mask, frames,
    frame_mask)`` for tokenised captions [N, L] and normalised frames
    [M, T, 3, H, W] with their mask [M, T] (see the README).
    """
    if isinstance(config, (str, Path)):
        config = Config.fromfile(str(config))
    elif isinstance(config, dict) and not isinstance(config, Config):
        config = Config(config)
    if 'model' not in config:
        raise KeyError(f'config {getattr(config, "filename", "")!r} has no '
                       '`model` entry')
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        model = MODELS.build(config.model)
    if checkpoint is not None:
        checkpoint = str(checkpoint)
        weights = state_dict_of(
            load_checkpoint_file(checkpoint, map_location='cpu'), checkpoint)
        load_weights(model, weights, checkpoint, strict=True)
    return model.to(device).eval()
