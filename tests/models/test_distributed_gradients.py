"""Gradients of a whole CLIP4Clip model under DistributedDataParallel.

Two gloo processes (spawned once per module) each build the same tiny model,
wrap it in ``DistributedDataParallel`` (CPU, ``device_ids=None``, as
:func:`mmclip4clip.engine.compat.enable_cpu_distributed` does) and run
``ddp(inputs, mode='loss')['loss'].backward()`` on their half of a 6-video
batch. The gradients of every trainable parameter are compared with one
process running the same model on the concatenated batch.

The convention (docs/training.md#gathering-over-processes; ``_AllGather``'s
docstring): the loose features are gathered, so the loss of every rank is the
loss L of the GLOBAL batch. DDP sums the parameter gradients of the W ranks and
divides by W.

- A parameter used after the gather (``logit_scale``) gets the full dL/dp on
  every rank; the DDP average is dL/dp.
- A parameter used before it (backbone, head) only sees its rank's rows.
  The gather's backward all-reduces (sums) the gradient of those rows over
  the W identical copies of L, i.e. hands W * dL/d(rows) to the local graph;
  rank r's gradient is W times the single-process contribution of its rows,
  and the DDP average (sum over r, divided by W) is again dL/dp.

So the DDP gradient must EQUAL the single-process gradient of the same loss
on the concatenated batch, with factor 1 for every parameter. (The "DDP
average = single-process gradient / W" picture holds only for a gather whose
backward keeps the local slice without the sum: the naive gather below. It
gives dL/dp / W before the gather but dL/dp for ``logit_scale``, so no single
scale factor matches it; the negative control checks that both readings of
the convention reject it.)

Precision: float64 (``model.double()`` and double frames). The two runs
sum the same terms in different orders (3 + 3 rows then an all-reduce,
against 6 rows in one go; 1 thread per worker, more in the single process).
In float32 that noise alone breaks an element-wise ``rtol=1e-5``: elements
that are cancellations of larger terms differed by up to 7e-4 relative
(q_proj.weight), and the largest difference per tensor reached 9e-7 of
the tensor's largest gradient, i.e. a float32 atol would have to sit at the
noise floor. In float64 the same noise is ~1e-15, so the check is
``rtol=1e-5`` plus ``atol = 1e-7 * max|single-process gradient|`` of the
tensor (for elements that are true zeros or cancellations); that is orders
of magnitude above float64 noise and orders below the naive gather's error
(half of every gradient before the gather).

Attention KEY biases (``self_attn.k_proj.bias`` of both CLIP towers) have a
gradient that is zero by construction: softmax is invariant to adding
``q . b_k`` to a whole row of scores. What both runs hold there is rounding
noise, so those tensors are checked to be zero at the global gradient scale
instead of being compared element by element (and they are the only
trainable parameters without a real gradient). The head's fused
``in_proj_bias`` has the same zero key slice; the tensor as a whole is
compared, the slice being covered by ``atol``.
"""
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.distributed as dist
from helpers import BOS, EOT, PAD, TINY_CLIP, run_gloo
from mmengine.registry import DefaultScope
from torch.nn.parallel import DistributedDataParallel

import mmclip4clip  # noqa: F401  (registers the components)
from mmclip4clip.models.heads import loose as loose_heads_module
from mmclip4clip.registry import MODELS

WORLD_SIZE = 2
RTOL = 1e-5
ATOL_OF_SCALE = 1e-7  # atol = this * max |single-process gradient| per tensor
ZERO_OF_SCALE = 1e-12  # |key bias grad| <= this * max |gradient| of the model
DTYPE = torch.float64

HEADS = dict(
    meanP=dict(type='MeanPHead'),
    seqTransf=dict(type='SeqTransfHead', embed_dim=32, num_layers=2,
                   num_heads=2, max_positions=16),
)

# The global batch: 6 videos of T = 4 frame slots and 6 captions padded to
# L = 10; rank r takes videos (and captions) 3r .. 3r + 2.
NUM_FRAMES, SEQ_LEN = 4, 10
REAL_FRAMES = [4, 2, 1, 3, 4, 2]
NUM_WORDS = [3, 8, 1, 5, 2, 6]


def build_model(head: str) -> torch.nn.Module:
    """The same weights in every process and in the single-process run."""
    torch.manual_seed(0)
    cfg = dict(type='CLIP4Clip',
               backbone=dict(type='CLIPBackbone', config=TINY_CLIP),
               head=HEADS[head])
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        return MODELS.build(cfg).to(DTYPE)


def global_batch() -> dict:
    """Normalised frames (padded frames zero) and CLIP-style captions
    ``[BOS, words, EOT, PAD...]`` of different lengths."""
    gen = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1] * k + [0] * (NUM_FRAMES - k)
                         for k in REAL_FRAMES])
    size = TINY_CLIP['vision_config']['image_size']
    frames = torch.randn(len(REAL_FRAMES), NUM_FRAMES, 3, size, size,
                         generator=gen, dtype=DTYPE)
    frames = frames * mask[..., None, None, None]
    ids = torch.full((len(NUM_WORDS), SEQ_LEN), PAD, dtype=torch.long)
    for i, k in enumerate(NUM_WORDS):
        ids[i, 0] = BOS
        ids[i, 1:k + 1] = torch.randint(1, BOS, (k,), generator=gen)
        ids[i, k + 1] = EOT
    return dict(frames=frames, frame_mask=mask, input_ids=ids,
                attention_mask=(ids != PAD).long())


def with_index(batch: dict) -> dict:
    """Add ``text_video_index``: caption i describes local video i."""
    return dict(batch, text_video_index=torch.arange(len(batch['frames'])))


def zero_by_construction(name: str) -> bool:
    """The attention key biases of CLIP's towers (see the module doc)."""
    return name.endswith('self_attn.k_proj.bias')


def trainable_grads(model: torch.nn.Module) -> dict:
    return {name: (None if p.grad is None else p.grad.detach().clone())
            for name, p in model.named_parameters() if p.requires_grad}


def naive_gather(x: torch.Tensor) -> torch.Tensor:
    """all_gather of detached features, the local slice swapped back in: the
    backward keeps only this rank's own gradient of its rows."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


GATHERS = dict(with_grad=None, naive=naive_gather)


def worker(rank: int, world_size: int, out_dir: str) -> None:
    """One gloo process (:func:`helpers.run_gloo`): its half of the batch
    through DDP for every head and gather; saves ``rank{rank}.pt``."""
    per_rank = len(REAL_FRAMES) // world_size
    local = slice(rank * per_rank, (rank + 1) * per_rank)
    inputs = with_index({k: v[local] for k, v in global_batch().items()})
    results = {}
    for head in HEADS:
        for gather_name, gather in GATHERS.items():
            # A fresh model and wrapper each pass: no stale gradients.
            model = build_model(head)
            ddp = DistributedDataParallel(model, device_ids=None)
            patch = (mock.patch.object(loose_heads_module,
                                       'all_gather_with_grad', gather)
                     if gather is not None else nullcontext())
            with patch:
                loss = ddp(inputs, mode='loss')['loss']
                loss.backward()
            results[head, gather_name] = dict(
                loss=loss.detach(), grads=trainable_grads(model))
    torch.save(results, Path(out_dir) / f'rank{rank}.pt')


@pytest.fixture(scope='module')
def ddp_results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp('ddp_grads')
    run_gloo(worker, str(out_dir), world_size=WORLD_SIZE)
    return [torch.load(out_dir / f'rank{r}.pt') for r in range(WORLD_SIZE)]


@pytest.fixture(scope='module')
def single_process() -> dict:
    """One process, no process group, the concatenated 6-video batch."""
    assert not (dist.is_available() and dist.is_initialized())
    out = {}
    for head in HEADS:
        model = build_model(head)
        loss = model(with_index(global_batch()), mode='loss')['loss']
        loss.backward()
        out[head] = dict(loss=loss.detach(), grads=trainable_grads(model))
    return out


def assert_grads_close(got: dict, expected: dict, scale: float = 1.0):
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        if zero_by_construction(name):
            continue
        atol = ATOL_OF_SCALE * grad.abs().max().item()
        torch.testing.assert_close(scale * got[name], grad, rtol=RTOL,
                                   atol=atol, msg=lambda m, n=name: f'{n}: {m}')


def max_abs(grads: dict) -> float:
    return max(g.abs().max().item() for g in grads.values())


@pytest.mark.parametrize('head', list(HEADS))
def test_every_trainable_parameter_gets_a_gradient(head, ddp_results,
                                                   single_process):
    # The comparison covers the backbone's two towers and the head.
    expected = single_process[head]['grads']
    prefixes = ['backbone.clip.text_model.', 'backbone.clip.vision_model.',
                'backbone.clip.text_projection.',
                'backbone.clip.visual_projection.',
                'backbone.clip.logit_scale']
    if head == 'seqTransf':
        prefixes.append('head.')
    for prefix in prefixes:
        assert any(n.startswith(prefix) for n in expected), prefix
    for grads in [expected] + [r[head, 'with_grad']['grads']
                               for r in ddp_results]:
        scale = max_abs(grads)
        for name, grad in grads.items():
            assert grad is not None, name
            if zero_by_construction(name):
                # Rounding noise only (see the module doc).
                assert grad.abs().max() <= ZERO_OF_SCALE * scale, name
            else:
                # Well above rounding noise: a real gradient.
                assert grad.abs().max() > 1e-6 * scale, name


@pytest.mark.parametrize('head', list(HEADS))
def test_ddp_gradient_equals_single_process_gradient(head, ddp_results,
                                                     single_process):
    expected = single_process[head]
    for result in ddp_results:
        got = result[head, 'with_grad']
        # Every rank's loss is the loss of the global batch.
        torch.testing.assert_close(got['loss'], expected['loss'])
        assert_grads_close(got['grads'], expected['grads'])
        # The factor is 1, not 1 / W (see the module doc).
        with pytest.raises(AssertionError):
            assert_grads_close(got['grads'], expected['grads'],
                               scale=WORLD_SIZE)


@pytest.mark.parametrize('head', list(HEADS))
def test_ddp_gradients_agree_across_ranks(head, ddp_results):
    first, *others = [r[head, 'with_grad']['grads'] for r in ddp_results]
    for grads in others:
        for name, grad in grads.items():
            assert torch.equal(grad, first[name]), name


@pytest.mark.parametrize('head', list(HEADS))
def test_naive_gather_fails_the_check(head, ddp_results, single_process):
    """Negative control: same loss, wrong gradients, caught by the check
    above and also by the "average = single / W" reading."""
    expected = single_process[head]
    pre_gather = [n for n in expected['grads'] if 'logit_scale' not in n]
    for result in ddp_results:
        naive = result[head, 'naive']
        torch.testing.assert_close(naive['loss'], expected['loss'])
        with pytest.raises(AssertionError):
            assert_grads_close(naive['grads'], expected['grads'])
        with pytest.raises(AssertionError):
            assert_grads_close(naive['grads'], expected['grads'],
                               scale=WORLD_SIZE)
        # Before the gather the naive gradient is the single-process one / W
        # on every parameter; only logit_scale (after it) is not scaled.
        assert_grads_close(
            {n: naive['grads'][n] for n in pre_gather},
            {n: expected['grads'][n] for n in pre_gather}, scale=WORLD_SIZE)
        torch.testing.assert_close(
            naive['grads']['backbone.clip.logit_scale'],
            expected['grads']['backbone.clip.logit_scale'], rtol=RTOL,
            atol=0.0)
