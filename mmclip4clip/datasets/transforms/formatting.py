"""Packs a decoded video and its tokenised captions for the model."""
from __future__ import annotations

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.structures import BaseDataElement

from mmclip4clip.registry import TRANSFORMS


def pack_frames(results: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded frames ``results['imgs']`` ([n, H, W, 3] each) -> uint8
    ``imgs`` [T, 3, H, W] zero-padded at the end to ``results['max_frames']``
    (default n) and a bool ``frame_mask`` [T], real frames first."""
    frames = np.stack(results['imgs'])  # [n, H, W, 3]
    n, h, w, _ = frames.shape
    max_frames = results.get('max_frames', n)
    imgs = torch.zeros(max_frames, 3, h, w, dtype=torch.uint8)
    imgs[:n] = torch.from_numpy(frames).permute(0, 3, 1, 2)
    frame_mask = torch.zeros(max_frames, dtype=torch.bool)
    frame_mask[:n] = True
    return imgs, frame_mask


@TRANSFORMS.register_module()
class PackVideoTextInputs(BaseTransform):
    """-> ``dict(inputs=..., data_samples=BaseDataElement)``.

    ``inputs`` holds ``imgs`` ([T, 3, H, W] uint8, zero-padded at the end to
    ``max_frames``), ``frame_mask`` ([T] bool, real frames first),
    ``input_ids`` and ``attention_mask`` ([K, L]). The data sample's metainfo
    holds ``meta_keys`` of the results.
    """

    def __init__(self, meta_keys: tuple[str, ...] = (
            'sample_idx', 'video_id', 'filename', 'captions')) -> None:
        self.meta_keys = meta_keys

    def transform(self, results: dict) -> dict:
        imgs, frame_mask = pack_frames(results)
        inputs = dict(
            imgs=imgs,
            frame_mask=frame_mask,
            input_ids=torch.from_numpy(results['input_ids']),
            attention_mask=torch.from_numpy(results['attention_mask']))
        sample = BaseDataElement(
            metainfo={k: results[k] for k in self.meta_keys if k in results})
        return dict(inputs=inputs, data_samples=sample)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(meta_keys={self.meta_keys})'
