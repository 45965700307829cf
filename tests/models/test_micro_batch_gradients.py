"""Micro-batched training steps (``model.micro_batch_size``, gradient
caching) against one pass over the whole batch.

A step in micro-batches must log the same loss and leave the same gradient
on every trainable parameter as mmengine's plain step over the whole batch:
one process (every head, 2-D and 3-D patches, a last smaller micro-batch,
the optimiser wrapper's clipping, ``coef_lr`` groups, frozen layers,
gradient accumulation, loss scaling) and two gloo processes under our DDP
wrapper against one process with the concatenated batch.

Float64 (as ``test_distributed_gradients``): the micro-batched step sums
the same terms in another order, a difference of ~1e-15 relative. The
check is ``rtol=1e-6`` plus ``atol = 1e-9 * max |gradient|`` of the whole
model, which also covers the attention key biases whose gradient is zero by
construction (rounding noise in both runs, see that module's doc). A wrong
scale (a micro-batch missing, a loss scale applied twice, a DDP average
left out) is off by a factor, far outside it.
"""
import copy
import functools
import os
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from helpers import BOS, EOT, PAD, TINY_CLIP, run_gloo
from mmengine.model import MMDistributedDataParallel
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import DefaultScope

import mmclip4clip  # noqa: F401  (registers the components)
from mmclip4clip.engine import grad_cache
from mmclip4clip.engine.compat import CLIP4ClipDistributedDataParallel
from mmclip4clip.models.data_preprocessors.video_text import (
    VideoTextDataPreprocessor,
)
from mmclip4clip.models.heads.loose import MeanPHead
from mmclip4clip.models.retrievers.clip4clip import CLIP4Clip
from mmclip4clip.registry import MODEL_WRAPPERS, MODELS

DTYPE = torch.float64
RTOL = 1e-6
ATOL_OF_SCALE = 1e-9  # atol = this * max |gradient| of the model

HEADS = dict(
    meanP=dict(type='MeanPHead'),
    seqLSTM=dict(type='SeqLSTMHead', embed_dim=32),
    seqTransf=dict(type='SeqTransfHead', embed_dim=32, num_layers=2,
                   num_heads=2, max_positions=16),
    # dropout 0.1 (the default): the cross-encoder's masks must be drawn
    # from the same random state as in the plain step.
    tightTransf=dict(type='TightTransfHead', embed_dim=32, num_layers=2,
                     num_heads=2, max_positions=16, dropout=0.1),
    dropoutMeanP=dict(type='TestFrameDropoutMeanPHead'),
)

# 6 videos of T = 4 frame slots and captions padded to L = 10; one process
# trains on the first 5 (micro-batches of 2: 2 + 2 + 1), two processes on
# 3 each.
NUM_FRAMES, SEQ_LEN = 4, 10
REAL_FRAMES = [4, 2, 1, 3, 4, 2]
NUM_WORDS = [3, 8, 1, 5, 2, 6]


@MODELS.register_module(name='TestFrameDropoutMeanPHead', force=True)
class FrameDropoutMeanPHead(MeanPHead):
    """meanP after dropout on the frame features: a random layer in the
    towers' part of the step, replayed by the second pass."""

    def forward(self, x, mask=None):
        return super().forward(F.dropout(x, 0.3, self.training), mask)


class Float64Preprocessor(VideoTextDataPreprocessor):
    """The real preprocessor, frames cast to the models' float64."""

    def forward(self, data: dict, training: bool = False) -> dict:
        out = super().forward(data, training)
        out['inputs']['frames'] = out['inputs']['frames'].to(DTYPE)
        return out


class GradRecordingOptimWrapper(OptimWrapper):
    """Keeps the gradients the optimiser step receives (before clipping)."""

    def __init__(self, model: torch.nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.grads = None

    def step(self, **kwargs) -> None:
        self.grads = trainable_grads(self.model)
        super().step(**kwargs)


class LossScalingOptimWrapper(GradRecordingOptimWrapper):
    """A stand-in for AMP's loss scaler: the loss is multiplied by a power
    of two in ``backward`` and the gradients divided by it in ``step``."""

    SCALE = 2.0**10

    def backward(self, loss, **kwargs) -> None:
        super().backward(loss * self.SCALE, **kwargs)

    def step(self, **kwargs) -> None:
        for group in self.optimizer.param_groups:
            for p in group['params']:
                if p.grad is not None:
                    p.grad.div_(self.SCALE)
        super().step(**kwargs)


def build_model(head: str, micro_batch_size: int | None = None,
                head_options: dict | None = None, **backbone) -> CLIP4Clip:
    """The same weights for every micro-batch size (and ``with_cp``)."""
    torch.manual_seed(0)
    cfg = dict(type='CLIP4Clip',
               backbone=dict(type='CLIPBackbone',
                             config=copy.deepcopy(TINY_CLIP), **backbone),
               head=dict(HEADS[head], **(head_options or {})),
               micro_batch_size=micro_batch_size)
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        model = MODELS.build(cfg).to(DTYPE)
    model.data_preprocessor = Float64Preprocessor()
    return model


def make_data(videos: slice = slice(0, 5), seed: int = 1) -> dict:
    """A dataloader batch: uint8 frames (padded frames zero after
    normalisation) and CLIP-style captions ``[BOS, words, EOT, PAD...]``."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1] * k + [0] * (NUM_FRAMES - k)
                         for k in REAL_FRAMES])
    size = TINY_CLIP['vision_config']['image_size']
    imgs = torch.randint(0, 256, (len(REAL_FRAMES), NUM_FRAMES, 3, size,
                                  size), generator=gen, dtype=torch.uint8)
    ids = torch.full((len(NUM_WORDS), SEQ_LEN), PAD, dtype=torch.long)
    for i, k in enumerate(NUM_WORDS):
        ids[i, 0] = BOS
        ids[i, 1:k + 1] = torch.randint(1, BOS, (k, ), generator=gen)
        ids[i, k + 1] = EOT
    num = videos.stop - videos.start
    return dict(inputs=dict(imgs=imgs[videos], frame_mask=mask[videos],
                            input_ids=ids[videos],
                            attention_mask=(ids[videos] != PAD).long(),
                            text_video_index=torch.arange(num)),
                data_samples=None)


def trainable_grads(model: torch.nn.Module) -> dict:
    return {name: (None if p.grad is None else p.grad.detach().clone())
            for name, p in model.named_parameters() if p.requires_grad}


def recorded_step(model: CLIP4Clip, data: dict,
                  wrapper_cls=GradRecordingOptimWrapper) -> dict:
    """One ``train_step`` (SGD, lr 0): its loss, the gradients the
    optimiser received and a draw of the random generator after it."""
    wrapper = wrapper_cls(model, optimizer=torch.optim.SGD(
        model.parameters(), lr=0.0))
    torch.manual_seed(5)
    log_vars = model.train_step(copy.deepcopy(data), wrapper)
    return dict(loss=log_vars['loss'].detach(), grads=wrapper.grads,
                next_random=torch.rand(4))


@functools.lru_cache(maxsize=None)
def plain_step(head: str, patch: str = '2d') -> dict:
    """:func:`recorded_step` of the plain (not micro-batched) model on
    :func:`make_data`, computed once per head and patch for the tests that
    compare against it (it is deterministic: seeded build and step).
    Callers only read it."""
    return recorded_step(build_model(head, linear_patch=patch), make_data())


def assert_grads_close(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    scale = max(g.abs().max().item() for g in expected.values()
                if g is not None)
    for name, grad in expected.items():
        if grad is None:
            assert got[name] is None, name
            continue
        torch.testing.assert_close(got[name], grad, rtol=RTOL,
                                   atol=ATOL_OF_SCALE * scale,
                                   msg=lambda m, n=name: f'{n}: {m}')


# ---- one process ----------------------------------------------------------
@pytest.mark.parametrize('head,patch,micro', [
    ('meanP', '2d', 2), ('meanP', '2d', 1), ('seqLSTM', '2d', 2),
    ('seqTransf', '2d', 3), ('tightTransf', '2d', 2), ('meanP', '3d', 2),
    ('tightTransf', '3d', 3)])
def test_micro_batched_step_equals_one_pass(head, patch, micro):
    expected = plain_step(head, patch)
    got = recorded_step(build_model(head, micro, linear_patch=patch),
                        make_data())
    torch.testing.assert_close(got['loss'], expected['loss'], rtol=1e-12,
                               atol=0.0)
    assert_grads_close(got['grads'], expected['grads'])
    # Every trainable parameter is compared with a real gradient, except
    # those the plain step does not use either.
    unused = {n for n, g in expected['grads'].items() if g is None}
    allowed = {'backbone.clip.logit_scale'} if head == 'tightTransf' else set()
    if patch == '3d':
        allowed.add('backbone.clip.vision_model.embeddings.patch_embedding'
                    '.weight')
    assert unused <= allowed
    if patch == '3d':
        assert expected['grads']['backbone.conv2.weight'].abs().max() > 0
    # The step leaves the random generator where the plain step does (the
    # tight head's dropout masks were drawn from the same state).
    assert torch.equal(got['next_random'], expected['next_random'])


def test_freed_heap_is_released_before_each_second_pass_micro_batch():
    """On the CPU the step hands freed heap memory back before each
    micro-batch of its second pass (3 micro-batches of 2 for 5 videos),
    and the gradients stay those of the plain step."""
    calls = []
    with mock.patch.object(grad_cache, 'release_freed_heap',
                           side_effect=lambda: calls.append(1) or True):
        got = recorded_step(build_model('meanP', 2), make_data())
    assert len(calls) == 3
    assert_grads_close(got['grads'], plain_step('meanP')['grads'])


@pytest.mark.parametrize('chunk_size', [3, 4])
def test_tight_pairs_in_blocks_equal_one_pass(chunk_size):
    """With chunks of 3 or 4 of the 25 pairs, the cross-encoder's second
    pass runs in blocks of 3 + 2 or 4 + 1 rows: the gradients, the loss and
    the random state after the step (dropout 0.1) are the plain step's."""
    options = dict(chunk_size=chunk_size)
    expected = recorded_step(build_model('tightTransf', head_options=options),
                             make_data())
    got = recorded_step(build_model('tightTransf', 2, head_options=options),
                        make_data())
    torch.testing.assert_close(got['loss'], expected['loss'], rtol=1e-12,
                               atol=0.0)
    assert_grads_close(got['grads'], expected['grads'])
    assert torch.equal(got['next_random'], expected['next_random'])


def test_tight_pairs_hold_one_block_of_activations():
    """In a micro-batched step the cross-encoder runs with autograd on one
    block of rows at a time (here 4 x 5 = 20 of the 25 pairs, then 5), and
    the whole matrix only without a graph."""
    model = build_model('tightTransf', 2, head_options=dict(chunk_size=4))
    calls = []
    pair_logits = model.head.pair_logits

    def recording(text, frames, frame_mask, chunk_size=None):
        calls.append((text.shape[0] * frames.shape[0],
                      torch.is_grad_enabled()))
        return pair_logits(text, frames, frame_mask, chunk_size)

    with mock.patch.object(model.head, 'pair_logits', recording):
        recorded_step(model, make_data())
    assert calls == [(20, False), (5, False), (20, True), (5, True)]


def test_a_wrong_micro_batch_gradient_fails_the_check():
    """Negative control: the last micro-batch's surrogate dropped."""
    expected = plain_step('meanP')
    original = CLIP4Clip.cached_grad_surrogate

    def without_last(self, batch, text_grad, video_grad, param_grads):
        out = original(self, batch, text_grad, video_grad, param_grads)
        return out * 0 if batch['frames'].shape[0] == 1 else out

    with mock.patch.object(CLIP4Clip, 'cached_grad_surrogate', without_last):
        got = recorded_step(build_model('meanP', 2), make_data())
    torch.testing.assert_close(got['loss'], expected['loss'])
    with pytest.raises(AssertionError):
        assert_grads_close(got['grads'], expected['grads'])


def test_micro_batches_with_activation_checkpointing_equal_one_pass():
    """``micro_batch_size`` and ``with_cp`` (backbone and seqTransf head)
    compose: the same loss and gradients as the plain step without
    checkpointing, and every block of the second pass is checkpointed (3
    micro-batches, each running the blocks of one plain step)."""
    from mmclip4clip.models import activation_checkpoint

    expected = plain_step('seqTransf')
    calls = []
    for micro in (None, 2):
        model = build_model('seqTransf', micro, dict(with_cp=True),
                            with_cp=True)
        with mock.patch.object(activation_checkpoint, 'checkpoint',
                               wraps=activation_checkpoint.checkpoint) as cp:
            got = recorded_step(model, make_data())
        calls.append(cp.call_count)
        torch.testing.assert_close(got['loss'], expected['loss'],
                                   rtol=1e-12, atol=0.0)
        assert_grads_close(got['grads'], expected['grads'])
        assert torch.equal(got['next_random'], expected['next_random'])
    # Text and image towers (2 blocks each) and the head's 2 blocks; the
    # no-grad first pass of the micro-batched step checkpoints nothing.
    assert calls == [6, 3 * 6]


@pytest.mark.parametrize('micro', [5, 8])
def test_micro_batch_not_smaller_than_the_batch_runs_the_plain_step(micro):
    expected = plain_step('meanP')
    with mock.patch.object(CLIP4Clip, 'cached_grad_surrogate',
                           side_effect=AssertionError('micro-batched')):
        got = recorded_step(build_model('meanP', micro), make_data())
    for name, grad in expected['grads'].items():
        assert torch.equal(got['grads'][name], grad), name


def test_tower_dropout_is_replayed_in_the_second_pass():
    """With a random layer in the towers each micro-batch draws its own
    masks; the gradient is that of the loss those masks give (the slow
    version: micro-batches embedded one after the other with autograd)."""
    data = make_data()
    slow = build_model('dropoutMeanP')
    inputs = slow.data_preprocessor(copy.deepcopy(data), True)['inputs']
    torch.manual_seed(5)
    parts = [slow.embed(slow.data_preprocessor(grad_cache.take(data, rows),
                                               True)['inputs'])
             for rows in grad_cache.micro_batch_slices(5, 2)]
    loss = slow.loss_from_embeddings(torch.cat([t for t, _ in parts]),
                                     torch.cat([v for _, v in parts]),
                                     inputs['frame_mask'])
    loss.backward()
    expected = trainable_grads(slow)

    got = recorded_step(build_model('dropoutMeanP', 2), data)
    torch.testing.assert_close(got['loss'], loss.detach(), rtol=1e-12,
                               atol=0.0)
    assert_grads_close(got['grads'], expected)
    # Without restoring the random state the second pass draws new masks.
    with mock.patch.object(grad_cache, 'set_rng_state'):
        unreplayed = recorded_step(build_model('dropoutMeanP', 2), data)
    with pytest.raises(AssertionError):
        assert_grads_close(unreplayed['grads'], expected)


def test_adamw_step_with_clipping_coef_lr_and_frozen_layers():
    """Both steps land on the same weights; frozen CLIP layers get no
    gradient and stay; the clipping is active."""
    weights, norms = [], []
    for micro in (None, 2):
        model = build_model('seqTransf', micro, freeze_layer_num=1)
        with DefaultScope.overwrite_default_scope('mmclip4clip'):
            wrapper = build_optim_wrapper(model, dict(
                constructor='CLIP4ClipOptimWrapperConstructor',
                optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.2),
                clip_grad=dict(max_norm=0.05),
                paramwise_cfg=dict(coef_lr=0.1, norm_decay_mult=0.0)))
        with mock.patch.object(wrapper, '_clip_grad',
                               wraps=wrapper._clip_grad) as clip:
            before = {n: p.detach().clone()
                      for n, p in model.named_parameters()}
            model.train_step(make_data(), wrapper)
        assert clip.call_count == 1
        norms.append(wrapper.message_hub.get_scalar('train/grad_norm')
                     .current())
        for name, p in model.named_parameters():
            assert p.requires_grad == (not torch.equal(p, before[name])), name
            assert p.grad is None or not p.grad.any(), name  # zero_grad ran
        weights.append({n: p.detach().clone()
                        for n, p in model.named_parameters()})
    assert norms[0] > 0.05  # the gradient was clipped
    assert norms[1] == pytest.approx(norms[0], rel=1e-9)
    assert any(not p.requires_grad for p in model.parameters())
    for name, weight in weights[0].items():
        torch.testing.assert_close(weights[1][name], weight, rtol=1e-6,
                                   atol=1e-9, msg=name)


def test_a_loss_scale_is_applied_once():
    """The cached gradients carry the wrapper's loss scale, so the second
    pass must not scale again (AMP's loss scaler works this way)."""
    expected = recorded_step(build_model('tightTransf'), make_data(),
                             LossScalingOptimWrapper)
    got = recorded_step(build_model('tightTransf', 2), make_data(),
                        LossScalingOptimWrapper)
    plain = plain_step('tightTransf')
    assert_grads_close(expected['grads'], plain['grads'])
    assert_grads_close(got['grads'], expected['grads'])


def test_gradient_accumulation_over_micro_batched_steps():
    """``accumulative_counts=2``: two steps, one update, same weights."""
    weights = []
    for micro in (None, 2):
        model = build_model('meanP', micro)
        wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.5),
                               accumulative_counts=2)
        first = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.train_step(make_data(slice(0, 5)), wrapper)
        for name, p in model.named_parameters():
            assert torch.equal(p, first[name]), name  # no update yet
        model.train_step(make_data(slice(1, 6), seed=2), wrapper)
        weights.append({n: p.detach().clone()
                        for n, p in model.named_parameters()})
        assert any(not torch.equal(p, first[n]) for n, p in weights[-1].items())
    for name, weight in weights[0].items():
        torch.testing.assert_close(weights[1][name], weight, rtol=1e-6,
                                   atol=1e-12, msg=name)


def test_cpu_bf16_autocast_step_matches_the_plain_bf16_step():
    """``--amp`` on the CPU (bf16 autocast, no scaler): the same loss and
    nearly the same gradients as the plain bf16 step (bf16 rounding
    differs with the matrix shapes)."""
    from mmclip4clip.engine.amp import MixedPrecisionOptimWrapper

    class Recording(MixedPrecisionOptimWrapper):
        def step(self, **kwargs) -> None:
            self.grads = trainable_grads(self.model)
            super().step(**kwargs)

    results = []
    for micro in (None, 2):
        torch.manual_seed(0)
        with DefaultScope.overwrite_default_scope('mmclip4clip'):
            model = MODELS.build(dict(
                type='CLIP4Clip', micro_batch_size=micro,
                backbone=dict(type='CLIPBackbone',
                              config=copy.deepcopy(TINY_CLIP)),
                head=HEADS['seqTransf']))
        wrapper = Recording(optimizer=torch.optim.SGD(model.parameters(),
                                                      lr=0.0))
        wrapper.model = model
        log_vars = model.train_step(make_data(), wrapper)
        results.append((log_vars['loss'], wrapper.grads))
    (plain_loss, plain), (micro_loss, micro) = results
    torch.testing.assert_close(micro_loss, plain_loss, rtol=2e-2, atol=0.0)
    flat = [torch.cat([g.flatten() for g in grads.values()])
            for grads in (plain, micro)]
    assert flat[0].dtype == torch.float32
    assert F.cosine_similarity(flat[0], flat[1], dim=0) > 0.99
    assert flat[1].norm() == pytest.approx(flat[0].norm().item(), rel=0.05)


@pytest.mark.parametrize('value', [0, -2, 2.5, True, '4'])
def test_invalid_micro_batch_size_names_the_key(value):
    with pytest.raises(ValueError, match='model.micro_batch_size'):
        build_model('meanP', value)


def test_a_whole_batch_loss_pass_is_refused_when_micro_batching():
    model = build_model('meanP', 2)
    inputs = model.data_preprocessor(make_data(), True)['inputs']
    with pytest.raises(RuntimeError, match='micro_batch_size=2'):
        model(inputs, mode='loss')
    with torch.no_grad():  # evaluation of the loss: no training pass
        model(inputs, mode='loss')


# ---- two processes ----------------------------------------------------------
WORLD_SIZE = 2
PER_RANK = 3


class CountingHookState:
    """Counts DDP's gradient reductions (one call per gradient bucket)."""

    def __init__(self) -> None:
        self.calls = 0


def counting_allreduce(state: CountingHookState, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import (
        allreduce_hook,
    )
    state.calls += 1
    return allreduce_hook(None, bucket)


def ddp_step(head: str, micro: int | None, rank: int,
             find_unused: bool) -> dict:
    model = build_model(head, micro)
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        ddp = MODEL_WRAPPERS.build(dict(
            type='CLIP4ClipDistributedDataParallel', module=model,
            device_ids=None, find_unused_parameters=find_unused))
    counter = CountingHookState()
    ddp.register_comm_hook(counter, counting_allreduce)
    wrapper = GradRecordingOptimWrapper(model, optimizer=torch.optim.SGD(
        model.parameters(), lr=0.0))
    videos = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    log_vars = ddp.train_step(make_data(videos), wrapper)
    return dict(loss=log_vars['loss'].detach(), grads=wrapper.grads,
                reductions=counter.calls)


def worker(rank: int, world_size: int, out_dir: str) -> None:
    """One gloo process (:func:`helpers.run_gloo`): plain and micro-batched
    DDP steps of its 3 videos; saves ``rank{rank}.pt``."""
    results = {}
    # meanP: every parameter must be in the last DDP forward
    # (find_unused_parameters off). tightTransf: logit_scale is unused.
    for head, find_unused in (('meanP', False), ('tightTransf', True)):
        for micro in (None, 2):
            results[head, micro] = ddp_step(head, micro, rank, find_unused)
    # mmengine's own wrapper does not micro-batch: refused, not run
    # silently in one pass.
    ddp = MMDistributedDataParallel(build_model('meanP', 2), device_ids=None)
    wrapper = OptimWrapper(torch.optim.SGD(ddp.parameters(), lr=0.0))
    try:
        ddp.train_step(make_data(slice(rank * PER_RANK,
                                       (rank + 1) * PER_RANK)), wrapper)
        results['plain_wrapper_error'] = None
    except RuntimeError as error:
        results['plain_wrapper_error'] = str(error)
    torch.save(results, Path(out_dir) / f'rank{rank}.pt')


@pytest.fixture(scope='module')
def ddp_results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp('micro_ddp')
    run_gloo(worker, str(out_dir), world_size=WORLD_SIZE)
    return [torch.load(out_dir / f'rank{r}.pt') for r in range(WORLD_SIZE)]


def test_ddp_micro_batched_gradient_equals_one_process_whole_batch(
        ddp_results):
    """meanP, 2 processes x 3 videos in micro-batches of 2 (2 + 1) against
    one process with the 6 videos in one pass."""
    assert not (dist.is_available() and dist.is_initialized())
    expected = recorded_step(build_model('meanP'),
                             make_data(slice(0, WORLD_SIZE * PER_RANK)))
    for result in ddp_results:
        got = result['meanP', 2]
        torch.testing.assert_close(got['loss'], expected['loss'])
        assert_grads_close(got['grads'], expected['grads'])
        # The plain DDP step agrees too (the existing convention).
        assert_grads_close(result['meanP', None]['grads'], expected['grads'])


def test_ddp_micro_batched_tight_head_equals_plain_ddp(ddp_results):
    """tightTransf scores each process's pairs: the reference is the plain
    DDP step; the head's gradients (from the loss, outside the towers)
    must be averaged over the processes too."""
    for result in ddp_results:
        expected, got = result['tightTransf', None], result['tightTransf', 2]
        torch.testing.assert_close(got['loss'], expected['loss'], rtol=1e-12,
                                   atol=0.0)
        assert_grads_close(got['grads'], expected['grads'])
    first, second = (r['tightTransf', 2]['grads'] for r in ddp_results)
    for name, grad in first.items():
        assert (grad is None) == (second[name] is None), name
        if grad is not None:
            assert torch.equal(grad, second[name]), name  # averaged


@pytest.mark.parametrize('head', ['meanP', 'tightTransf'])
def test_ddp_reduces_gradients_once_per_step(head, ddp_results):
    """As many bucket all-reduces as the plain step (not one set per
    micro-batch): every backward but the last ran in ``no_sync``."""
    for result in ddp_results:
        plain = result[head, None]['reductions']
        assert plain >= 1
        assert result[head, 2]['reductions'] == plain


def test_mmengine_ddp_wrapper_refuses_a_micro_batched_model(ddp_results):
    for result in ddp_results:
        assert 'micro_batch_size=2' in result['plain_wrapper_error']
        assert 'CLIP4ClipDistributedDataParallel' in \
            result['plain_wrapper_error']


def test_torchrun_jobs_default_to_the_micro_batching_wrapper():
    from mmengine.config import Config

    from mmclip4clip.engine.compat import enable_cpu_distributed
    cfg = Config(dict(find_unused_parameters=True))
    with mock.patch.dict(os.environ, dict(RANK='0', WORLD_SIZE='1')), \
            mock.patch.object(dist, 'is_initialized', return_value=True):
        enable_cpu_distributed(cfg)
    assert cfg.model_wrapper_cfg['type'] == 'CLIP4ClipDistributedDataParallel'
    assert cfg.model_wrapper_cfg['find_unused_parameters'] is True
    # The Runner looks the type up in mmengine's root registry.
    assert MMENGINE_MODEL_WRAPPERS.get(cfg.model_wrapper_cfg['type']) is \
        CLIP4ClipDistributedDataParallel


def test_cfg_options_accept_micro_batch_size():
    from mmengine.config import Config

    from mmclip4clip.engine.config_utils import (
        ConfigOptionError,
        merge_cfg_options,
    )
    config = Path(__file__).resolve().parents[2] / (
        'configs/retrieval/clip4clip/clip4clip_tiny-p4-res32-scratch_1xb32-'
        'u8-30e_synthetic-rgb.py')
    cfg = Config.fromfile(str(config))
    merge_cfg_options(cfg, {'model.micro_batch_size': 8})
    assert cfg.model.micro_batch_size == 8
    with pytest.raises(ConfigOptionError, match='micro_batch_size'):
        merge_cfg_options(cfg, {'model.micro_batch_size': 'eight'})


def test_frames_are_preprocessed_one_micro_batch_at_a_time():
    """The float frames of the whole batch never exist at once: each call
    of the data preprocessor gets at most one micro-batch of videos."""
    model = build_model('meanP', 2)
    expected = plain_step('meanP')
    seen = []
    forward = model.data_preprocessor.forward

    def recording(data, training=False):
        seen.append(data['inputs']['imgs'].shape[0])
        return forward(data, training)

    with mock.patch.object(model.data_preprocessor, 'forward', recording):
        got = recorded_step(model, make_data())
    assert seen and max(seen) <= 2, seen
    assert sum(seen) == 2 * 5  # each micro-batch twice (both passes)
    assert_grads_close(got['grads'], expected['grads'])
