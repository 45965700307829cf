"""Batches samples of :class:`PackVideoTextInputs`."""
from __future__ import annotations

import torch

from mmclip4clip.registry import FUNCTIONS


@FUNCTIONS.register_module()
def video_text_collate(batch: list[dict]) -> dict:
    """Stack videos and concatenate their captions.

    Returns ``dict(inputs=..., data_samples=[...])`` with ``imgs`` [B, T, 3,
    H, W], ``frame_mask`` [B, T], ``input_ids`` / ``attention_mask`` [N, L]
    and ``text_video_index`` [N] (the video of each caption). The captions
    keep their padding: the backbone's ``encode_text`` cuts what follows the
    batch's longest caption, for every caller.
    """
    inputs = [sample['inputs'] for sample in batch]
    ids = torch.cat([x['input_ids'] for x in inputs])
    mask = torch.cat([x['attention_mask'] for x in inputs])
    counts = torch.tensor([len(x['input_ids']) for x in inputs])
    return dict(
        inputs=dict(
            imgs=torch.stack([x['imgs'] for x in inputs]),
            frame_mask=torch.stack([x['frame_mask'] for x in inputs]),
            input_ids=ids,
            attention_mask=mask,
            text_video_index=torch.repeat_interleave(
                torch.arange(len(batch)), counts)),
        data_samples=[sample['data_samples'] for sample in batch])
