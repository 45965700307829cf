"""MixedPrecisionOptimWrapper on the CPU (mmclip4clip.engine.amp), called
directly: bf16 autocast, no loss scaler, plain gradients, clipping and
checkpoints without (or from a CUDA run, with) a scaler state.

The end-to-end ``tools/train.py --amp`` run is in test_amp_validation.py.
"""
import pytest
import torch
from torch import nn

from mmclip4clip.engine.amp import MixedPrecisionOptimWrapper

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason='the CPU behaviour of the wrapper')


def make(lr: float = 0.1, **kwargs) -> tuple[nn.Linear,
                                             MixedPrecisionOptimWrapper]:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    return model, MixedPrecisionOptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=lr), **kwargs)


@pytest.mark.parametrize('dtype', [None, 'bfloat16', torch.bfloat16])
def test_cpu_autocasts_to_bfloat16_without_a_scaler(dtype):
    model, wrapper = make(dtype=dtype)
    assert wrapper.cast_dtype == torch.bfloat16
    assert wrapper.loss_scaler is None
    with wrapper.optim_context(model):
        out = model(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize('dtype', ['float16', torch.float16, torch.float32])
def test_cpu_refuses_other_autocast_types(dtype):
    with pytest.raises(ValueError, match='CPU autocast supports only '
                       'bfloat16'):
        make(dtype=dtype)


def test_step_applies_the_unscaled_gradient():
    """backward: the loss's own gradient (no scale); step: plain SGD."""
    model, wrapper = make(lr=0.5)
    x = torch.randn(5, 4)
    before = {k: v.clone() for k, v in model.named_parameters()}
    loss = model(x).square().sum()
    expected = torch.autograd.grad(loss, list(model.parameters()),
                                   retain_graph=True)
    wrapper.backward(loss)
    for param, grad in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(param.grad, grad, rtol=0, atol=0)
    wrapper.step()
    for (name, param), grad in zip(model.named_parameters(), expected,
                                   strict=True):
        torch.testing.assert_close(param.detach(), before[name] - 0.5 * grad)


def test_backward_counts_accumulation_steps():
    model, wrapper = make()
    wrapper.initialize_count_status(model, 0, 4)
    wrapper._accumulative_counts = 2
    for _ in range(2):
        wrapper.backward(model(torch.randn(1, 4)).sum())
    assert wrapper._inner_count == 2


def test_step_clips_gradients_when_configured():
    model, wrapper = make(lr=0.0, clip_grad=dict(max_norm=1e-3))
    wrapper.backward(model(torch.randn(8, 4)).square().sum() * 100)
    wrapper.step()
    norm = torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert norm == pytest.approx(1e-3, rel=1e-4)


def test_state_dict_has_no_scaler_and_a_cuda_scaler_state_is_dropped():
    model, wrapper = make()
    wrapper.update_params(model(torch.randn(2, 4)).sum())
    state = wrapper.state_dict()
    assert 'loss_scaler' not in state
    _, other = make()
    # A checkpoint of a CUDA run carries the scaler's state: resumable here.
    other.load_state_dict(dict(state, loss_scaler={'scale': 512.0}))
    assert other.loss_scaler is None
    assert other.state_dict()['param_groups'] == state['param_groups']
