"""Moves a video-text batch to the model's device and normalises the frames."""
from __future__ import annotations

from typing import Sequence

import torch
from mmengine.model import BaseDataPreprocessor

from mmclip4clip.registry import MODELS

# CLIP's pixel statistics, on the [0, 1] scale
# (docs/data_preparation.md#resize-crop-and-normalisation).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@MODELS.register_module()
class VideoTextDataPreprocessor(BaseDataPreprocessor):
    """uint8 frames -> float frames normalised with CLIP's mean and std.

    Padded frames (mask 0) are set to zero AFTER normalisation, i.e. they are
    all-zero in the normalised input space, as in the original code.

    Args:
        mean: per-channel mean on the [0, 1] scale.
        std: per-channel std on the [0, 1] scale.
    """

    def __init__(self, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD) -> None:
        super().__init__()
        # Folded into the [0, 255] scale: (x / 255 - mean) / std.
        self.register_buffer(
            'mean', torch.tensor(mean).view(3, 1, 1) * 255, persistent=False)
        self.register_buffer(
            'std', torch.tensor(std).view(3, 1, 1) * 255, persistent=False)

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        inputs = dict(data['inputs'])
        frames = inputs.pop('imgs')  # [B, T, 3, H, W] uint8
        mask = inputs['frame_mask']  # [B, T]
        # The buffers' dtype: float32, or float64 in a model made double.
        frames = (frames.to(self.mean.dtype) - self.mean) / self.std
        frames = frames * mask.to(frames.dtype)[..., None, None, None]
        inputs['frames'] = frames
        return dict(inputs=inputs, data_samples=data.get('data_samples'))
