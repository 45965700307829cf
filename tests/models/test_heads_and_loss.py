"""MeanPHead, SymmetricInfoNCELoss and all_gather_with_grad.

The distributed tests spawn two gloo processes once per module; every
process writes its results to a file and the assertions run here.
"""
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from helpers import run_gloo
from torch import nn

from mmclip4clip.models.heads.loose import MeanPHead, masked_mean
from mmclip4clip.models.losses import SymmetricInfoNCELoss, all_gather_with_grad

TOL = dict(atol=1e-6, rtol=1e-5)
WORLD_SIZE = 2


def make_features(b: int = 4, t: int = 5, d: int = 8,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame features and a mask with full, partial and single-frame rows."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, d, generator=gen)
    lengths = [t, 3, 1, 2][:b]
    mask = torch.tensor([[1] * k + [0] * (t - k) for k in lengths])
    return x, mask


# ---- masked_mean / MeanPHead ---------------------------------------------
def test_masked_mean_equals_mean_over_real_frames_loop():
    x, mask = make_features()
    out = masked_mean(x, mask)
    for i in range(len(x)):
        torch.testing.assert_close(out[i], x[i][mask[i].bool()].mean(dim=0),
                                   **TOL)


def test_meanp_head_equals_per_video_loop_over_real_frames():
    x, mask = make_features()
    out = MeanPHead()(x, mask)
    assert out.shape == (x.shape[0], x.shape[2])
    for i in range(len(x)):
        real = x[i][mask[i].bool()].double()
        frames = real / real.norm(dim=-1, keepdim=True)
        mean = frames.mean(dim=0)
        expected = (mean / mean.norm()).float()
        torch.testing.assert_close(out[i], expected, **TOL)


def test_meanp_head_normalises_each_frame_before_the_mean():
    # Scaling one frame must not change the result (it would without the
    # per-frame normalisation, i.e. mmaction2's adapter arithmetic).
    x, mask = make_features()
    scaled = x.clone()
    scaled[0, 0] *= 50.0
    head = MeanPHead()
    torch.testing.assert_close(head(scaled, mask), head(x, mask), **TOL)
    unnormalised = F.normalize(masked_mean(scaled, mask), dim=-1)
    assert not torch.allclose(unnormalised[0], head(x, mask)[0], **TOL)


def test_meanp_head_ignores_values_of_padded_frames():
    x, mask = make_features()
    gen = torch.Generator().manual_seed(1)
    garbage = 1e4 * torch.randn(x.shape, generator=gen)
    changed = torch.where(mask.bool()[..., None], x, garbage)
    assert not torch.equal(changed, x)
    head = MeanPHead()
    torch.testing.assert_close(head(changed, mask), head(x, mask), **TOL)


def test_meanp_head_without_mask_averages_every_frame():
    x, _ = make_features()
    head = MeanPHead()
    torch.testing.assert_close(head(x), head(x, torch.ones(x.shape[:2])),
                               **TOL)


def test_meanp_head_all_padding_video_gives_finite_zero_vector():
    x, mask = make_features()
    mask[1] = 0
    x = x.requires_grad_()
    out = MeanPHead()(x, mask)
    # masked_mean counts zero real frames as one (mean 0), normalize(0) = 0.
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    others = [0, 2, 3]
    torch.testing.assert_close(out[others],
                               MeanPHead()(x[others], mask[others]), **TOL)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_meanp_head_default_is_bitwise_the_frame_axis_formula():
    """dim's default keeps the old arithmetic exactly (issue 14 case 5)."""
    x, mask = make_features()
    frames = F.normalize(x, dim=-1)
    weights = mask.to(x.dtype).unsqueeze(-1)
    old = (frames * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    assert torch.equal(MeanPHead()(x, mask), F.normalize(old, dim=-1))
    assert torch.equal(MeanPHead(dim=(1, ))(x, mask), MeanPHead()(x, mask))
    assert torch.equal(MeanPHead()(x),
                       F.normalize(frames.mean(dim=1), dim=-1))


def slow_mean_pooling(x: torch.Tensor, mask: torch.Tensor | None,
                      frame_axes: bool) -> torch.Tensor:
    """[B, T, K, D]: average axes 1 and 2 (frame_axes) or only axis 2,
    one normalised vector at a time, in double, skipping padded frames."""
    b, t, k, _ = x.shape
    out = []
    for i in range(b):
        if frame_axes:
            real = [x[i, f, j] for f in range(t) for j in range(k)
                    if mask is None or mask[i, f]]
            groups = [real]
        else:
            groups = [[x[i, f, j] for j in range(k)] for f in range(t)]
        pooled = []
        for vectors in groups:
            if not vectors:  # no real frame: zero, as the original
                pooled.append(torch.zeros(x.shape[-1], dtype=torch.float64))
                continue
            mean = sum(v.double() / v.double().norm() for v in vectors)
            mean = mean / len(vectors)
            pooled.append(mean / mean.norm())
        out.append(torch.stack(pooled) if not frame_axes else pooled[0])
    return torch.stack(out).float()


@pytest.mark.parametrize('dim', [(1, 2), (2, 1), (-3, -2), [1, -2]])
def test_meanp_head_over_two_axes_equals_slow_loop_with_mask(dim):
    """mmaction2's SimpleMeanAdapter(dim=(1, 2)) shape, [B, T, K, D] ->
    [B, D], honouring the frame mask; an all-padded video gives zero."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, 3, 8, generator=gen)
    _, mask = make_features()
    mask[3] = 0
    out = MeanPHead(dim=dim)(x, mask)
    assert out.shape == (4, 8)
    torch.testing.assert_close(out, slow_mean_pooling(x, mask, True), **TOL)
    assert torch.equal(out[3], torch.zeros(8))
    torch.testing.assert_close(MeanPHead(dim=dim)(x),
                               slow_mean_pooling(x, None, True), **TOL)


def test_meanp_head_over_an_inner_axis_keeps_the_frames():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 5, 3, 8, generator=gen)
    out = MeanPHead(dim=2)(x)
    assert out.shape == (4, 5, 8)
    torch.testing.assert_close(out, slow_mean_pooling(x, None, False), **TOL)


@pytest.mark.parametrize('dim, shape, with_mask, message', [
    (0, (4, 5, 8), False, 'axis 0 is the batch axis'),
    ((1, 2), (4, 5, 8), False, 'axis 2 is the feature axis'),
    (-1, (4, 5, 8), False, 'axis 2 is the feature axis'),
    (1, (4, 8), False, 'axis 1 is the feature axis'),
    ((1, 3), (4, 5, 8), False, 'an axis is out of range'),
    ((1, -2), (4, 5, 8), False, 'an axis is named twice'),
    (2, (4, 5, 3, 8), True, 'which is not averaged'),
    ((1, 2), (4, 6, 3, 8), True, r'the frame mask has shape \[4, 5\]'),
])
def test_meanp_head_refuses_axes_that_make_no_sense(dim, shape, with_mask,
                                                    message):
    x = torch.randn(shape)
    mask = make_features()[1] if with_mask else None
    with pytest.raises(ValueError, match=r'MeanPHead\(dim=.*' + message):
        MeanPHead(dim=dim)(x, mask)


@pytest.mark.parametrize('dim', [(), True, 1.0, (1, '2'), None])
def test_meanp_head_refuses_a_dim_that_is_not_ints(dim):
    with pytest.raises(ValueError, match='dim must be an int or a non-empty'):
        MeanPHead(dim=dim)


# ---- SymmetricInfoNCELoss ------------------------------------------------
@pytest.mark.parametrize('n', [1, 3, 6])
def test_infonce_equals_float64_loop_of_both_directions(n,
                                                        infonce_reference):
    gen = torch.Generator().manual_seed(n)
    # Asymmetric, so that the two directions differ.
    sim = 5 * torch.randn(n, n, generator=gen, dtype=torch.float64)
    loss = SymmetricInfoNCELoss()(sim)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(infonce_reference(sim), rel=1e-12)
    weighted = SymmetricInfoNCELoss(loss_weight=0.25)(sim)
    assert weighted.item() == pytest.approx(0.25 * loss.item(), rel=1e-12)


def test_infonce_uses_both_directions(infonce_reference):
    gen = torch.Generator().manual_seed(7)
    sim = 3 * torch.randn(5, 5, generator=gen, dtype=torch.float64)
    row_only = F.cross_entropy(sim, torch.arange(5)).item()
    assert SymmetricInfoNCELoss()(sim).item() != pytest.approx(row_only)
    assert SymmetricInfoNCELoss()(sim.t()).item() == pytest.approx(
        infonce_reference(sim), rel=1e-12)


def test_infonce_decreases_as_the_diagonal_dominates():
    gen = torch.Generator().manual_seed(8)
    base = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    loss = SymmetricInfoNCELoss()
    values = [loss(base + a * torch.eye(6, dtype=torch.float64)).item()
              for a in (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)]
    assert all(later < earlier for earlier, later in zip(values, values[1:]))
    assert values[-1] < 1e-5 < values[0]
    # Same scores with the matches off the diagonal: a worse loss.
    dominant = base + 8 * torch.eye(6, dtype=torch.float64)
    assert loss(dominant.roll(1, dims=1)).item() > loss(dominant).item()


# ---- all_gather_with_grad --------------------------------------------------
def test_all_gather_with_grad_is_identity_without_distributed():
    assert not (dist.is_available() and dist.is_initialized())
    x = torch.randn(3, 4, requires_grad=True)
    out = all_gather_with_grad(x)
    assert out is x


GLOBAL_BATCH, IN_DIM, OUT_DIM = 8, 6, 5


def gather_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Same weights and the same global batch in every process."""
    torch.manual_seed(0)
    net = nn.ModuleDict(dict(text=nn.Linear(IN_DIM, OUT_DIM),
                             video=nn.Linear(IN_DIM, OUT_DIM))).double()
    net.logit_scale = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    x_text = torch.randn(GLOBAL_BATCH, IN_DIM, dtype=torch.float64)
    x_video = torch.randn(GLOBAL_BATCH, IN_DIM, dtype=torch.float64)
    return net, x_text, x_video


def contrastive_loss(net: nn.Module, x_text: torch.Tensor,
                     x_video: torch.Tensor, gather) -> torch.Tensor:
    text = gather(F.normalize(net['text'](x_text), dim=-1))
    video = gather(F.normalize(net['video'](x_video), dim=-1))
    sim = net.logit_scale.exp() * text @ video.t()
    return SymmetricInfoNCELoss()(sim), text


def naive_gather(x: torch.Tensor) -> torch.Tensor:
    """all_gather + cat keeping only the local slice in the graph."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def gather_worker(rank: int, world_size: int, out_dir: str):
    """One process of :func:`helpers.run_gloo`: the losses, gradients and
    gathered texts of both gathers, saved to ``out_dir/rank{rank}.pt``."""
    results = {}
    per_rank = GLOBAL_BATCH // world_size
    local = slice(rank * per_rank, (rank + 1) * per_rank)
    for name, gather in (('with_grad', all_gather_with_grad),
                         ('naive', naive_gather)):
        net, x_text, x_video = gather_problem()
        loss, text_all = contrastive_loss(net, x_text[local],
                                          x_video[local], gather)
        loss.backward()
        grads = {}
        for pname, param in net.named_parameters():
            grad = param.grad.clone()
            dist.all_reduce(grad)  # DDP: sum, then divide by the world
            grads[pname] = grad / world_size
        results[name] = dict(loss=loss.detach(), grads=grads,
                             text_all=text_all.detach())

    # Upstream of the gather, a tensor whose gradient buffer autograd
    # shares with the gathered output (AddBackward passes one tensor to
    # both inputs): its gradient must not be touched by the gather.
    torch.manual_seed(1)
    x = torch.randn(per_rank, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(GLOBAL_BATCH, 3, dtype=torch.float64,
                    requires_grad=True)
    weight = torch.arange(GLOBAL_BATCH * 3, dtype=torch.float64)
    summed = y * 1.0 + all_gather_with_grad(x)
    (summed * weight.view(GLOBAL_BATCH, 3)).sum().backward()
    results['shared'] = dict(y_grad=y.grad, x_grad=x.grad,
                             weight=weight.view(GLOBAL_BATCH, 3))
    torch.save(results, Path(out_dir) / f'rank{rank}.pt')


@pytest.fixture(scope='module')
def gather_results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp('gather')
    run_gloo(gather_worker, str(out_dir), world_size=WORLD_SIZE)
    return [torch.load(out_dir / f'rank{r}.pt') for r in range(WORLD_SIZE)]


@pytest.fixture(scope='module')
def single_process() -> dict:
    net, x_text, x_video = gather_problem()
    loss, text = contrastive_loss(net, x_text, x_video, lambda x: x)
    loss.backward()
    return dict(loss=loss.detach(), text=text.detach(),
                grads={n: p.grad.clone() for n, p in net.named_parameters()})


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_all_gather_with_grad_concatenates_in_rank_order(gather_results,
                                                         single_process):
    for result in gather_results:
        got = result['with_grad']
        torch.testing.assert_close(got['text_all'], single_process['text'])
        torch.testing.assert_close(got['loss'], single_process['loss'])


def test_all_gather_with_grad_gives_single_process_gradient(gather_results,
                                                            single_process):
    expected = single_process['grads']
    for result in gather_results:
        grads = result['with_grad']['grads']
        assert grads.keys() == expected.keys()
        for name, grad in grads.items():
            assert relative_error(grad, expected[name]) < 1e-5, name


def test_naive_gather_gives_a_different_gradient(gather_results,
                                                 single_process):
    # The loss is the same; only the gradient of the gathered rows is wrong.
    expected = single_process['grads']
    for result in gather_results:
        naive = result['naive']
        torch.testing.assert_close(naive['loss'], single_process['loss'])
        for name in ('text.weight', 'video.weight'):
            assert relative_error(naive['grads'][name], expected[name]) > 0.1


def test_all_gather_with_grad_leaves_shared_upstream_gradients_intact(
        gather_results):
    for rank, result in enumerate(gather_results):
        shared = result['shared']
        weight = shared['weight']
        # d/dy of sum(weight * (y + gather(x))) is weight on every rank.
        torch.testing.assert_close(shared['y_grad'], weight)
        # Each rank's loss gives weight[rows of x]; the gather sums ranks.
        rows = slice(rank * shared['x_grad'].shape[0],
                     (rank + 1) * shared['x_grad'].shape[0])
        torch.testing.assert_close(shared['x_grad'],
                                   WORLD_SIZE * weight[rows])
