"""The ``bigbatch`` section: what micro-batched steps (``micro_batch_size``,
gradient caching) and activation checkpointing (``with_cp``) cost.

A grid of training steps of CLIP4Clip-seqTransf (CLIP's towers and the
head's blocks checkpointed together) at several global batches: each batch
plain and in micro-batches smaller than it, each without and with
``with_cp``. Per step: time, peak memory, and both as ratios to the plain
step of the same batch, the only figures comparable across machines. The
learning rate is 0, so the weights never move and every step of one batch
computes the same loss: ``loss_diff`` shows it does. On a CPU the videos
have fewer frames than the recipe's 12.

On a CPU one more pair of steps runs at the run's frames (the recipe's 12
in a full run): a global batch in micro-batches (64 in 8s), against one
plain step of its micro-batch, without and with ``with_cp``
(``recipe_frames``).

On CUDA a search adds the largest global batch of ViT-B/32 x 12 frames
that fits in the device's memory, plain and micro-batched with ``with_cp``
(doubling from the smallest batch, then bisecting between the last batch
that fitted and the first that did not).
"""
from __future__ import annotations

import copy
import gc
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from time import perf_counter

import torch
from mmengine.optim import OptimWrapper

from mmclip4clip.models.retrievers import CLIP4Clip

from .measure import peak_memory, synchronize


@dataclass(frozen=True)
class BigBatchSizes:
    """The ``bigbatch`` section's sizes for one benchmark run."""

    frames: int  # per video in the grid on a CPU (CUDA: the run's frames)
    batches: tuple[int, ...]  # global batches of the grid
    micro_batches: tuple[int, ...]  # each one smaller than a batch
    search_micro_batch: int  # CUDA search: micro-batch of the with_cp run
    search_start: int  # CUDA search: first batch tried
    search_limit: int  # CUDA search: largest batch tried
    search_step: int  # CUDA search: the bisection stops this close
    recipe_batch: int  # CPU: a global batch at the run's frames (12 full)
    recipe_micro_batch: int  # ... in micro-batches of this many videos


BIG_BATCH_SIZES = dict(
    full=BigBatchSizes(frames=2, batches=(16, 32, 64),
                       micro_batches=(4, 8, 16), search_micro_batch=16,
                       search_start=16, search_limit=4096, search_step=8,
                       recipe_batch=64, recipe_micro_batch=8),
    quick=BigBatchSizes(frames=1, batches=(8, 16), micro_batches=(4, 8),
                        search_micro_batch=16, search_start=16,
                        search_limit=512, search_step=16, recipe_batch=8,
                        recipe_micro_batch=4),
    tiny=BigBatchSizes(frames=2, batches=(4, ), micro_batches=(2, ),
                       search_micro_batch=2, search_start=4, search_limit=32,
                       search_step=4, recipe_batch=4, recipe_micro_batch=2),
)

COMPARABLE = ('memory_ratio, peak_above_grads_ratio and time_ratio compare '
              'a step with the plain step (no micro-batches, no with_cp) of '
              'the same batch in the same run; time_vs_micro_steps and '
              'memory_vs_micro_step compare a micro-batched step with '
              'ceil(batch / m) plain steps of its micro-batch m (same '
              'with_cp) and with the peak of one; peak_mib and seconds are '
              'this machine\'s at these shapes (on a CPU: fewer frames than '
              'the recipe\'s 12), not comparable with other sizes')


def build_model(sizes, with_cp: bool, device: torch.device) -> CLIP4Clip:
    """CLIP4Clip-seqTransf of the run's shapes (``FULL``: ViT-B/32), the
    same random weights for both ``with_cp`` values."""
    torch.manual_seed(0)
    model = CLIP4Clip(
        backbone=dict(type='CLIPBackbone', config=copy.deepcopy(sizes.clip),
                      with_cp=with_cp),
        head=dict(type='SeqTransfHead', embed_dim=sizes.embed_dim,
                  num_layers=sizes.head_layers, with_cp=with_cp),
        data_preprocessor=dict(type='VideoTextDataPreprocessor'))
    return model.to(device).train()


def make_batch(batch: int, frames: int, image_size: int,
               device: torch.device) -> dict:
    """A dataloader batch: uint8 frames and 32-token captions (SOT, words,
    EOT), one per video."""
    gen = torch.Generator().manual_seed(batch)
    ids = torch.zeros(batch, 32, dtype=torch.long)
    ids[:, 0] = 49406
    ids[:, 1:31] = torch.randint(1, 49000, (batch, 30), generator=gen)
    ids[:, 31] = 49407
    imgs = torch.randint(0, 256, (batch, frames, 3, image_size, image_size),
                         generator=gen, dtype=torch.uint8)
    return dict(inputs=dict(imgs=imgs.to(device),
                            frame_mask=torch.ones(batch, frames,
                                                  device=device),
                            input_ids=ids.to(device),
                            attention_mask=torch.ones_like(ids).to(device),
                            text_video_index=torch.arange(batch,
                                                          device=device)),
                data_samples=None)


def train_step(model: CLIP4Clip, optim_wrapper: OptimWrapper, data: dict,
               micro_batch_size: int | None) -> float:
    """One optimiser step (mmengine's ``train_step``), micro-batched when
    ``micro_batch_size`` is set; returns the loss."""
    model.micro_batch_size = micro_batch_size
    return model.train_step(data, optim_wrapper)['loss'].item()


def _optim_wrapper(model: CLIP4Clip) -> OptimWrapper:
    # lr 0: AdamW's full work, weights unchanged (every step of a batch
    # computes the same loss).
    return OptimWrapper(torch.optim.AdamW(model.parameters(), lr=0.0))


def _ratio(value: float, plain: float) -> float | None:
    """``value / plain``; None when the plain figure is not positive (a
    peak too small for the CPU's page-granular high-water mark)."""
    return value / plain if plain > 0 else None


def warmed_model(sizes, with_cp: bool, frames: int,
                 device: torch.device) -> tuple[CLIP4Clip, OptimWrapper]:
    """:func:`build_model` and its optimiser wrapper after one step of 2
    videos, which creates AdamW's state, so that no measured step's peak
    includes it."""
    model = build_model(sizes, with_cp, device)
    wrapper = _optim_wrapper(model)
    train_step(model, wrapper, make_batch(2, frames, sizes.image_size,
                                          device), None)
    return model, wrapper


def against_own_step(step: dict, own: dict, batch: int, micro: int) -> dict:
    """A micro-batched step of ``batch`` videos against the plain step of
    its micro-batch ``micro``: its time over ceil(batch / micro) such
    steps, its peak over one's."""
    return dict(time_vs_micro_steps=step['seconds'] / (
                    -(-batch // micro) * own['seconds']),
                memory_vs_micro_step=_ratio(step['peak_mib'],
                                            own['peak_mib']))


def measured_step(model: CLIP4Clip, wrapper: OptimWrapper, data: dict,
                  micro: int | None, device: torch.device) -> dict | None:
    """Time, peak memory and loss of one step; None when it runs out of
    CUDA memory (the step's tensors are freed, the gradients dropped)."""
    result = None
    try:
        with peak_memory(device) as peak:
            synchronize(device)
            start = perf_counter()
            loss = train_step(model, wrapper, data, micro)
            synchronize(device)
            seconds = perf_counter() - start
        result = dict(seconds=seconds, peak_mib=peak.mib, loss=loss)
    except torch.cuda.OutOfMemoryError:
        pass  # the failed step's tensors are freed once the except ends
    if result is None:
        model.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
    return result


def step_grid(sizes, device: torch.device) -> dict:
    """Time and peak memory of a step for each batch x micro-batch x
    ``with_cp``, with ratios to the plain step of the same batch."""
    bb = BIG_BATCH_SIZES[sizes.name]
    frames = sizes.frames if device.type == 'cuda' else bb.frames
    models = {with_cp: warmed_model(sizes, with_cp, frames, device)
              for with_cp in (False, True)}
    grads_mib = sum(p.numel() * p.element_size()
                    for p in models[False][0].parameters()
                    if p.requires_grad) / 2**20
    # The plain step of each micro-batch size: what a micro-batched step is
    # held against (k = ceil(batch / m) of them do the same tower work).
    micro_steps = {}
    for with_cp in (False, True):
        model, wrapper = models[with_cp]
        for micro in bb.micro_batches:
            if micro < max(bb.batches):
                micro_steps[micro, with_cp] = measured_step(
                    model, wrapper, make_batch(micro, frames,
                                               sizes.image_size, device),
                    None, device)
    rows = []
    for batch in bb.batches:
        data = make_batch(batch, frames, sizes.image_size, device)
        plain = None
        for with_cp in (False, True):
            model, wrapper = models[with_cp]
            for micro in (None, ) + tuple(m for m in bb.micro_batches
                                          if m < batch):
                row = dict(batch=batch, micro_batch_size=micro,
                           with_cp=with_cp)
                step = measured_step(model, wrapper, data, micro, device)
                if step is None:
                    rows.append(dict(row, out_of_memory=True))
                    continue
                row.update(step, out_of_memory=False,
                           peak_above_grads_mib=step['peak_mib'] - grads_mib)
                if micro is None and not with_cp:
                    plain = row
                if plain is not None:
                    row.update(
                        time_ratio=row['seconds'] / plain['seconds'],
                        memory_ratio=_ratio(row['peak_mib'],
                                            plain['peak_mib']),
                        peak_above_grads_ratio=_ratio(
                            row['peak_above_grads_mib'],
                            plain['peak_above_grads_mib']),
                        loss_diff=abs(row['loss'] - plain['loss']))
                own = micro_steps.get((micro, with_cp))
                if own is not None:
                    row.update(against_own_step(row, own, batch, micro))
                rows.append(row)
        del data
    return dict(head='SeqTransfHead', frames=frames,
                image_size=sizes.image_size, grads_mib=grads_mib,
                comparable=COMPARABLE, runs=rows,
                micro_steps=[dict(micro_batch_size=m, with_cp=cp, **step)
                             for (m, cp), step in micro_steps.items()
                             if step is not None])


def recipe_frames(sizes, device: torch.device) -> dict:
    """CPU: a micro-batched step at the run's frames per video (the grid's
    are fewer) against the plain step of its micro-batch, without and with
    ``with_cp``: its peak over that step's, its time over ceil(batch / m)
    such steps."""
    bb = BIG_BATCH_SIZES[sizes.name]
    batch, micro = bb.recipe_batch, bb.recipe_micro_batch
    runs = []
    for with_cp in (False, True):
        model, wrapper = warmed_model(sizes, with_cp, sizes.frames, device)
        own = measured_step(model, wrapper, make_batch(
            micro, sizes.frames, sizes.image_size, device), None, device)
        step = measured_step(model, wrapper, make_batch(
            batch, sizes.frames, sizes.image_size, device), micro, device)
        runs.append(dict(with_cp=with_cp, micro_step=own,
                         micro_batched=step,
                         **against_own_step(step, own, batch, micro)))
        del model, wrapper
        gc.collect()
    return dict(frames=sizes.frames, image_size=sizes.image_size,
                batch=batch, micro_batch_size=micro, runs=runs)


def _fits(model: CLIP4Clip, wrapper: OptimWrapper, batch: int, frames: int,
          image_size: int, micro: int | None, device: torch.device
          ) -> dict | None:
    """Time and peak memory of a step at ``batch`` (the second of two: the
    first allocates), or None when it runs out of device memory."""
    try:
        data = make_batch(batch, frames, image_size, device)
    except torch.cuda.OutOfMemoryError:
        return None
    if measured_step(model, wrapper, data, micro, device) is None:
        return None
    step = measured_step(model, wrapper, data, micro, device)
    if step is None:
        return None
    return dict(batch=batch, seconds=step['seconds'],
                videos_per_s=batch / step['seconds'],
                peak_mib=step['peak_mib'])


def search_largest(try_batch: Callable[[int], dict | None], start: int,
                   limit: int, step: int) -> tuple[dict | None, int | None]:
    """The largest batch in ``[start, limit]`` for which ``try_batch``
    gives a result (fitting is taken to be monotone in the batch), to
    within ``step``: doubling from ``start``, then bisecting between the
    last batch that fitted and the first that did not.

    Returns:
        ``try_batch``'s result at that batch (None when ``start`` does not
        fit) and the smallest batch found not to fit (None when ``limit``
        fits: larger batches may fit too).
    """
    best, batch, failed = None, start, None
    while True:
        result = try_batch(batch)
        if result is None:
            failed = batch
            break
        best = result
        if batch >= limit:
            break
        batch = min(2 * batch, limit)
    if best is not None and failed is not None:
        low = best['batch']
        while failed - low > step:
            mid = (low + failed) // 2
            result = try_batch(mid)
            if result is None:
                failed = mid
            else:
                best, low = result, mid
    return best, failed


def largest_batch(sizes, device: torch.device) -> dict:
    """CUDA only: the largest global batch whose training step fits in the
    device's memory, plain and micro-batched with ``with_cp``."""
    bb = BIG_BATCH_SIZES[sizes.name]
    out = dict(frames=sizes.frames, image_size=sizes.image_size,
               device_mib=torch.cuda.get_device_properties(
                   device).total_memory / 2**20,
               search_limit=bb.search_limit, runs=[])
    for with_cp, micro in ((False, None), (True, bb.search_micro_batch)):
        model, wrapper = warmed_model(sizes, with_cp, sizes.frames, device)
        best, failed = search_largest(
            partial(_fits, model, wrapper, frames=sizes.frames,
                    image_size=sizes.image_size, micro=micro, device=device),
            bb.search_start, bb.search_limit, bb.search_step)
        # first_failed None: the limit fitted, larger batches may too.
        out['runs'].append(dict(micro_batch_size=micro, with_cp=with_cp,
                                largest=best, first_failed=failed))
        del model, wrapper
        gc.collect()
        torch.cuda.empty_cache()
    return out


def big_batch(device: torch.device, sizes) -> dict:
    """The ``bigbatch`` section (see the module docstring)."""
    result = step_grid(sizes, device)
    if device.type == 'cuda':
        result['largest_batch'] = largest_batch(sizes, device)
    else:
        result['recipe_frames'] = recipe_frames(sizes, device)
    return result
