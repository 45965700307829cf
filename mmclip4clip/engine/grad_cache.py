"""Micro-batched contrastive training steps with cached gradients.

A contrastive loss couples every pair of the batch, so splitting the batch
into independent forward/backward passes (plain gradient accumulation)
changes the loss: each piece would only see its own negatives. Gradient
caching (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size
under Memory Limited Setup") keeps the loss of the whole batch and splits
only the towers (open_clip's ``accum_freq`` reaches the same gradient by
recomputing the whole loss once per micro-batch):

1. embed every micro-batch without a graph, saving the random generator
   states before each one;
2. make the embeddings leaf tensors, compute the loss of the whole batch on
   them (gathered over processes exactly as a plain step does) and
   back-propagate it once: this gives d loss / d embeddings (the "cached
   gradients") and the gradients of the parameters used after the towers
   (``logit_scale``, the tight head);
3. embed each micro-batch again with its random states restored (same
   dropout masks) and back-propagate ``sum(embedding * cached gradient)``:
   by the chain rule its parameter gradient is that micro-batch's share of
   d loss / d parameters.

What is split is the towers (and a loose head inside the video tower). The
tight head's cross-encoder runs in step 2 over the process's B x B pairs in
two passes of its own (``PairScores.full_for_backward``): the pair logits
without a graph, then, once the loss has given their gradient, again one
block of rows at a time with autograd and that block's share of the
gradient, its random state replayed. So it holds one block's activations
(blocks of whole cross-encoder chunks: ``chunk_size`` pairs, at least one
row), not the B x B pairs'; it costs one more cross-encoder forward.

The sum over micro-batches is the full-batch gradient (up to the order of
floating-point additions). Stochastic layers inside the towers draw their
masks per micro-batch, so their random numbers differ from a one-pass step
over the whole batch, but every micro-batch's two passes use the same ones:
the gradient is exactly that of the loss computed (and logged). Layers
after the towers (the tight head's dropout) run once, over the whole batch,
as in a plain step, and the random state after the step is the one the
plain step leaves when the towers draw nothing.

Scaling and the optimiser wrapper: step 2 goes through
``optim_wrapper.scale_loss`` and ``optim_wrapper.backward``, so
``accumulative_counts`` and the AMP loss scaler apply to the loss as in
mmengine's ``update_params``; the cached gradients then already carry both
factors, so the surrogates of step 3 are back-propagated unscaled (scaling
them again would apply the factors twice). The step, clipping and
``zero_grad`` are the wrapper's, when ``should_update()`` says so.

On the CPU, freed heap memory is handed back to the system before each
micro-batch of step 3 (:func:`~mmclip4clip.utils.memory.release_freed_heap`),
so that the process's memory follows the live micro-batch rather than the
allocator's holes.

Under DDP (:class:`~mmclip4clip.engine.compat.CLIP4ClipDistributedDataParallel`)
every micro-batch backward but the last runs in ``no_sync()``; the last one
runs through the DDP forward and reduces every gradient once. The
gradients of step 2 (parameters not in the towers) are taken out of
``.grad`` and re-added by the last surrogate (``sum(p * g)``), so that DDP
sees them in the graph it reduces: otherwise, with
``find_unused_parameters``, DDP would treat them as unused and leave them
un-averaged.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from ..utils.memory import release_freed_heap
from .hooks import rng_state, set_rng_state


def micro_batch_slices(batch_size: int, micro_batch_size: int) -> list[slice]:
    """``[0, m), [m, 2m), ...`` covering ``batch_size`` rows; the last may
    be shorter."""
    return [slice(start, min(start + micro_batch_size, batch_size))
            for start in range(0, batch_size, micro_batch_size)]


def take(data: dict, rows: slice) -> dict:
    """The dataloader batch of videos ``rows`` and their captions (one per
    video, in video order), not yet preprocessed."""
    inputs = data['inputs']
    out = {key: value[rows] for key, value in inputs.items()
           if key != 'text_video_index'}
    out['text_video_index'] = torch.arange(
        rows.stop - rows.start, device=inputs['text_video_index'].device)
    samples = data.get('data_samples')
    return dict(inputs=out,
                data_samples=None if samples is None else samples[rows])


def micro_batched_train_step(model: nn.Module, data, optim_wrapper,
                             wrapper: nn.Module | None = None
                             ) -> dict[str, Tensor]:
    """One training step of ``model`` (a CLIP4Clip with ``micro_batch_size``
    set) in micro-batches, with the loss and gradients of the whole batch.

    Args:
        model: the CLIP4Clip module.
        data: the batch from the dataloader.
        optim_wrapper: the step's mmengine optimiser wrapper.
        wrapper: the DDP wrapper of ``model``, or None.

    Returns:
        The log variables of the plain step (``loss``).
    """
    runner = model if wrapper is None else wrapper
    batch_size = model.check_training_batch(data['inputs'])
    if batch_size <= model.micro_batch_size:
        with optim_wrapper.optim_context(model):
            data = model.data_preprocessor(data, True)
        return _one_pass_step(model, runner, data, optim_wrapper)
    slices = micro_batch_slices(batch_size, model.micro_batch_size)

    def micro_batch(rows: slice) -> dict:
        # Preprocessed one micro-batch at a time (twice per step): the
        # float frames of the whole batch would cost 4x its uint8 frames.
        with optim_wrapper.optim_context(model):
            return model.data_preprocessor(take(data, rows), True)['inputs']

    # Decided before the backward passes, as mmengine's optim_context does.
    sync = optim_wrapper.should_sync()

    # 1. Embeddings without a graph.
    states, texts, videos = [], [], []
    with torch.no_grad(), optim_wrapper.optim_context(model):
        for rows in slices:
            states.append(rng_state())
            text, video = model.embed(micro_batch(rows))
            texts.append(text)
            videos.append(video)
    text = torch.cat(texts).requires_grad_()  # [B, D]
    video = torch.cat(videos).requires_grad_()  # [B, D] or [B, T, D]
    del texts, videos

    # 2. The loss of the whole batch, its gradients w.r.t. the embeddings
    # and the parameters after the towers (kept apart from .grad).
    trainable = [(name, p) for name, p in model.named_parameters()
                 if p.requires_grad]
    earlier = [p.grad for _, p in trainable]
    for _, p in trainable:
        p.grad = None
    # The loss's gradient w.r.t. the scores first, then the scorer's
    # backward: the tight head recomputes its pairs a block at a time.
    with optim_wrapper.optim_context(model):
        scores, scores_backward = model.batch_scores(
            text, video,
            model.data_preprocessor.cast_data(data['inputs']['frame_mask'])
        ).full_for_backward()
        loss = model.loss_module(scores)
    parsed_loss, log_vars = model.parse_losses(dict(loss=loss))
    optim_wrapper.backward(optim_wrapper.scale_loss(parsed_loss))
    with optim_wrapper.optim_context(model):
        scores_backward(scores.grad)
    del scores, scores_backward
    after_loss = rng_state()
    param_grads = {name: p.grad for name, p in trainable
                   if p.grad is not None}
    for (_, p), grad in zip(trainable, earlier):
        p.grad = grad

    # 3. Each micro-batch again, with the cached gradients.
    on_cpu = text.device.type == 'cpu'
    for i, rows in enumerate(slices):
        last = i == len(slices) - 1
        if on_cpu:
            # The previous pass's activations, freed, go back to the system
            # before this one's are allocated (glibc would keep them
            # resident): at ViT-B/32 x 12 frames, batch 64 in micro-batches
            # of 8, the step's peak fell from 1.38x to 1.17x that of a plain
            # step of 8 (README, "The paper's batch on few GPUs").
            release_freed_heap()
        set_rng_state(states[i])
        no_sync = wrapper is not None and not (last and sync)
        with wrapper.no_sync() if no_sync else nullcontext():
            with optim_wrapper.optim_context(model):
                surrogate = runner(
                    inputs=dict(batch=micro_batch(rows),
                                text_grad=text.grad[rows],
                                video_grad=video.grad[rows],
                                param_grads=param_grads if last else {}),
                    mode='surrogate')
            if surrogate.requires_grad:
                surrogate.backward()
    set_rng_state(after_loss)

    if optim_wrapper.should_update():
        optim_wrapper.step()
        optim_wrapper.zero_grad()
    return log_vars


def _one_pass_step(model: nn.Module, runner: nn.Module, data: dict,
                   optim_wrapper) -> dict[str, Tensor]:
    """mmengine's plain step on already preprocessed data."""
    with optim_wrapper.optim_context(runner):
        losses = runner(**data, mode='loss')
    parsed_loss, log_vars = model.parse_losses(losses)
    optim_wrapper.update_params(parsed_loss)
    return log_vars
