"""Does a model see the direction of time? Score each caption against its own
clip and against the same clip played backwards.

On the synthetic dataset a clip played backwards is exactly a clip of the
opposite direction, so for a caption of a moving clip ("moves left") the
forward clip is right and the reversed one wrong. A model that pools frames
without order (meanP) gives both the same score: 50 % (ties count half). The
measure is t2v R@1 among the two candidates, over the captions of moving
clips.
"""
from __future__ import annotations

import torch
from mmengine.utils import ProgressBar

from mmclip4clip.datasets.collate import video_text_collate

# Scores this close are the same score up to float summation order (a mean
# over reversed frames adds them in another order).
TIE_RTOL = 1e-5


def reverse_real_frames(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, ...] frames with their real frames (first in each row) in
    reverse order; padding stays at the end."""
    out = frames.clone()
    for i, n in enumerate(mask.sum(dim=1).tolist()):
        out[i, :n] = frames[i, :n].flip(0)
    return out


@torch.no_grad()
def reversal_accuracy(model, dataset, is_moving, progress: bool = True) -> dict:
    """Pairwise accuracy of captions against their clip vs. its reversal.

    Args:
        model: a retriever in eval mode (``data_preprocessor``, ``sim_matrix``).
        dataset: an evaluation dataset (one sample per video, all captions).
        is_moving: ``video path -> bool``, which videos have a direction.

    Returns ``dict(accuracy=%, captions=n, ties=n)``.
    """
    device = next(model.parameters()).device
    wins = ties = total = 0
    bar = ProgressBar(len(dataset)) if progress else None
    for idx in range(len(dataset)):
        sample = dataset[idx]
        if is_moving(sample['data_samples'].metainfo['filename']):
            batch = model.data_preprocessor(video_text_collate([sample]))
            inputs = batch['inputs']
            frames, mask = inputs['frames'].to(device), inputs['frame_mask']
            both = torch.cat([frames, reverse_real_frames(frames, mask)])
            scores = model.sim_matrix(
                inputs['input_ids'].to(device),
                inputs['attention_mask'].to(device), both,
                torch.cat([mask, mask]).to(device)).float().cpu()  # [K, 2]
            tie = torch.isclose(scores[:, 0], scores[:, 1], rtol=TIE_RTOL,
                                atol=0.0)
            wins += int(((scores[:, 0] > scores[:, 1]) & ~tie).sum())
            ties += int(tie.sum())
            total += scores.shape[0]
        if bar is not None:
            bar.update()
    if total == 0:
        raise ValueError('no caption of a moving clip in the dataset')
    return dict(accuracy=100.0 * (wins + 0.5 * ties) / total, captions=total,
                ties=ties)
