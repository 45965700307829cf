"""``with_cp`` (activation checkpointing) of the CLIP towers and the heads'
blocks: the same loss, gradients and RNG state as without it, far fewer
tensors kept for the backward pass, and nothing different outside training.

Everything runs in float64 with dropout active, so a checkpointed block that
drew other dropout masks when recomputed would change the gradients.
"""
import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope

import mmclip4clip  # noqa: F401  (registers the components)
from mmclip4clip.engine.config_utils import (
    ConfigOptionError,
    merge_cfg_options,
)
from mmclip4clip.models import activation_checkpoint
from mmclip4clip.models.backbones.clip import CLIPBackbone
from mmclip4clip.models.heads import (
    MMAction2TransformerHead,
    SeqTransfHead,
    TightTransfHead,
)

LAYERS = 3
D, T = 32, 4
CONFIGS = Path(__file__).resolve().parents[2] / 'configs/retrieval/clip4clip'
TINY_CONFIG = '{}_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb.py'


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def count_checkpoints(monkeypatch) -> list[int]:
    """A one-element list counting the calls of ``torch.utils.checkpoint``
    made through :func:`activation_checkpoint.checkpointed`."""
    calls = [0]
    real = activation_checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(activation_checkpoint, 'checkpoint', counting)
    return calls


@contextmanager
def saved_bytes(model: torch.nn.Module) -> Iterator[list[int]]:
    """Bytes of the distinct storages autograd keeps for the backward pass
    of what runs inside, parameters excluded (they are held anyway); read
    ``[0]`` after the block. With checkpointing, a block's inner tensors go
    to the checkpoint's own hooks (and are dropped); its saved input comes
    here."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}  # data_ptr -> storage, held so no address is reused

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage
        return tensor

    total = []
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total
    total.append(sum(s.nbytes() for s in kept.values()))


def loss_and_grads(model: torch.nn.Module, step: Callable[[], torch.Tensor],
                   seed: int = 5):
    """Loss, {name: grad} of the trainable parameters (None if no gradient
    reached it) and the next draw of the global RNG after backward."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = step()
    loss.backward()
    grads = {name: param.grad for name, param in model.named_parameters()
             if param.requires_grad}
    return loss.detach(), grads, torch.rand(4)


def assert_same_training_step(model, model_cp, step, step_cp):
    loss, grads, rng = loss_and_grads(model, step)
    loss_cp, grads_cp, rng_cp = loss_and_grads(model_cp, step_cp)
    # Bit for bit: the recomputed blocks run the same kernels on the same
    # inputs with the same dropout masks.
    assert torch.equal(loss_cp, loss)
    assert grads_cp.keys() == grads.keys()
    for name, grad in grads.items():
        if grad is None:
            assert grads_cp[name] is None, name
        else:
            assert torch.equal(grads_cp[name], grad), name
    assert any(grad is not None and grad.abs().sum() > 0
               for grad in grads.values())
    # The recomputation leaves the global RNG where the forward left it.
    assert torch.equal(rng_cp, rng)
    # Dropout acts: another seed gives another loss.
    torch.manual_seed(6)
    assert not torch.equal(step().detach(), loss)


# --- the CLIP towers --------------------------------------------------------


def make_backbone(clip_config: dict, with_cp: bool, **kwargs) -> CLIPBackbone:
    config = copy.deepcopy(clip_config)
    for tower in ('text_config', 'vision_config'):
        config[tower].update(num_hidden_layers=LAYERS, attention_dropout=0.2)
    torch.manual_seed(0)
    return CLIPBackbone(config=config, with_cp=with_cp, **kwargs).train()


def backbone_step(backbone: CLIPBackbone, make_token_ids
                  ) -> Callable[[], torch.Tensor]:
    """A CLIP-style training loss on 3 captions and 3 videos (one padded
    frame, one video with a single frame)."""
    gen = torch.Generator().manual_seed(1)
    frames = torch.randn(3, T, 3, 16, 16, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]])
    ids, attention_mask = make_token_ids([3, 6, 1], 10)

    def step() -> torch.Tensor:
        text = F.normalize(backbone.encode_text(ids, attention_mask), dim=-1)
        video = F.normalize(
            backbone.encode_frames(frames, mask).sum(dim=1), dim=-1)
        logits = backbone.logit_scale.exp() * text @ video.t()
        return F.cross_entropy(logits, torch.arange(3))

    return step


@pytest.mark.parametrize('linear_patch,freeze_layer_num',
                         [('2d', -1), ('3d', -1), ('2d', 2), ('3d', 2)])
def test_backbone_with_cp_gives_the_same_loss_gradients_and_rng_state(
        clip_config, make_token_ids, linear_patch, freeze_layer_num):
    # freeze_layer_num=2 of 3 blocks: only the last block of each tower
    # trains; with the 3-D patch the gradient of the (trained) Conv3d still
    # flows back through the frozen blocks.
    models = [make_backbone(clip_config, with_cp, linear_patch=linear_patch,
                            freeze_layer_num=freeze_layer_num)
              for with_cp in (False, True)]
    assert_same_training_step(
        *models, *(backbone_step(m, make_token_ids) for m in models))
    if freeze_layer_num >= 0:
        frozen = [p for p in models[1].parameters() if not p.requires_grad]
        assert frozen and all(p.grad is None for p in frozen)
    if linear_patch == '3d':
        assert models[1].conv2.weight.grad.abs().sum() > 0


def test_backbone_with_cp_checkpoints_every_block_in_training_only(
        clip_config, make_token_ids, count_checkpoints):
    plain = make_backbone(clip_config, with_cp=False)
    backbone = make_backbone(clip_config, with_cp=True)
    step = backbone_step(backbone, make_token_ids)
    step()
    assert count_checkpoints[0] == 2 * LAYERS  # every block of both towers
    count_checkpoints[0] = 0
    for train, grad in ((False, True), (False, False), (True, False)):
        plain.train(train)
        backbone.train(train)
        with torch.set_grad_enabled(grad):
            torch.manual_seed(5)
            expected = backbone_step(plain, make_token_ids)()
            torch.manual_seed(5)
            assert torch.equal(step(), expected)
    assert count_checkpoints[0] == 0


def test_backbone_with_cp_keeps_a_fraction_of_the_activations(
        clip_config, make_token_ids):
    kept = {}
    for with_cp in (False, True):
        backbone = make_backbone(clip_config, with_cp)
        with saved_bytes(backbone) as total:
            backbone_step(backbone, make_token_ids)()
        kept[with_cp] = total[0]
    # Each of the 3 blocks keeps its input ([N, S, W]) instead of about a
    # dozen tensors of that size (norms, q/k/v, attention, 4x MLP hidden).
    assert kept[True] < 0.2 * kept[False], kept


def test_hugging_face_checkpointing_does_not_reach_our_blocks(
        clip_config, make_token_ids):
    # Why the backbone has its own option: transformers' switch checkpoints
    # the layers' forward (it does for CLIPModel's own forward), which the
    # backbone never calls: clip_layer / one_token_layer run the blocks.
    ours, theirs = [], []
    pixels = torch.randn(3, 3, 16, 16)
    for hf_checkpointing in (False, True):
        backbone = make_backbone(clip_config, with_cp=False)
        if hf_checkpointing:
            backbone.clip.activation_checkpointing_enable()
        with saved_bytes(backbone) as total:
            backbone_step(backbone, make_token_ids)()
        ours.append(total[0])
        with saved_bytes(backbone) as total:
            backbone.clip.vision_model(pixel_values=pixels)
        theirs.append(total[0])
    assert theirs[1] < 0.5 * theirs[0], theirs
    assert ours[0] == ours[1]


# --- the heads' blocks ------------------------------------------------------


def make_head(kind: str, with_cp: bool) -> torch.nn.ModuleDict:
    """The head and, as parameters, its input features (3 texts, 3 videos),
    so the gradient that goes back to the towers is compared too."""
    torch.manual_seed(0)
    if kind == 'seqTransf':
        head = SeqTransfHead(D, num_layers=LAYERS, max_positions=8,
                             with_cp=with_cp)
    elif kind == 'tightTransf':
        head = TightTransfHead(D, num_layers=LAYERS, max_positions=8,
                               dropout=0.2, chunk_size=4, with_cp=with_cp)
    else:
        head = MMAction2TransformerHead(T, D, num_layers=LAYERS,
                                        with_cp=with_cp)
    gen = torch.Generator().manual_seed(2)
    inputs = torch.nn.ParameterDict(dict(
        text=torch.randn(3, D, generator=gen),
        frames=torch.randn(3, T, D, generator=gen)))
    return torch.nn.ModuleDict(dict(head=head, inputs=inputs)).train()


def head_step(kind: str, model: torch.nn.ModuleDict
              ) -> Callable[[], torch.Tensor]:
    """InfoNCE over the 3 texts and 3 videos (padded frames in two of
    them). Only the tight head has dropout of its own, so the loose heads'
    frames pass through a dropout here to make the RNG matter."""
    head = model['head']
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])

    def step() -> torch.Tensor:
        text, frames = model['inputs']['text'], model['inputs']['frames']
        if kind == 'tightTransf':
            logits = head.pair_logits(text, frames, mask)  # 9 pairs, 3 chunks
        else:
            video = head(F.dropout(frames, 0.2), mask)
            logits = 10 * F.normalize(text, dim=-1) @ video.t()
        return F.cross_entropy(logits, torch.arange(3))

    return step


HEADS = ['seqTransf', 'tightTransf', 'mmaction2Transf']


@pytest.mark.parametrize('kind', HEADS)
def test_head_with_cp_gives_the_same_loss_gradients_and_rng_state(kind):
    heads = [make_head(kind, with_cp) for with_cp in (False, True)]
    assert_same_training_step(*heads, *(head_step(kind, h) for h in heads))


@pytest.mark.parametrize('kind', HEADS)
def test_head_with_cp_checkpoints_every_block_in_training_only(
        kind, count_checkpoints):
    plain, head = make_head(kind, False), make_head(kind, True)
    head_step(kind, head)()
    chunks = 3 if kind == 'tightTransf' else 1
    assert count_checkpoints[0] == LAYERS * chunks
    count_checkpoints[0] = 0
    for train, grad in ((False, True), (False, False), (True, False)):
        plain.train(train)
        head.train(train)
        with torch.set_grad_enabled(grad):
            torch.manual_seed(5)
            expected = head_step(kind, plain)()
            torch.manual_seed(5)
            assert torch.equal(head_step(kind, head)(), expected)
    assert count_checkpoints[0] == 0


@pytest.mark.parametrize('kind', HEADS)
def test_head_with_cp_keeps_a_fraction_of_the_activations(kind):
    kept = {}
    for with_cp in (False, True):
        head = make_head(kind, with_cp)
        with saved_bytes(head) as total:
            head_step(kind, head)()
        kept[with_cp] = total[0]
    assert kept[True] < 0.2 * kept[False], kept


# --- the option in configs --------------------------------------------------


def tiny_batch() -> dict:
    """2 videos of 3 frames at 32 px and one caption each (vocabulary of the
    tiny configs: 254 starts and 255 ends a caption)."""
    gen = torch.Generator().manual_seed(3)
    return dict(
        frames=torch.randn(2, 3, 3, 32, 32, generator=gen),
        frame_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]),
        input_ids=torch.tensor([[254, 5, 6, 255], [254, 7, 255, 0]]),
        attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        text_video_index=torch.arange(2))


@pytest.mark.parametrize('head', ['seqTransf', 'tightTransf'])
def test_cfg_options_turn_on_with_cp_and_training_is_unchanged(head):
    cfg = Config.fromfile(str(CONFIGS / TINY_CONFIG.format(
        f'clip4clip-{head}')))
    # Attention dropout in both towers, so the recomputed blocks draw masks.
    merge_cfg_options(cfg, {
        f'model.backbone.config.{tower}.attention_dropout': 0.1
        for tower in ('text_config', 'vision_config')})
    cfg_cp = copy.deepcopy(cfg)
    merge_cfg_options(cfg_cp, {'model.backbone.with_cp': True,
                               'model.head.with_cp': True})
    models = []
    for config in (cfg, cfg_cp):
        torch.manual_seed(0)
        with DefaultScope.overwrite_default_scope('mmclip4clip'):
            models.append(MODELS.build(config.model).double().train())
    model, model_cp = models
    assert model_cp.backbone.with_cp and model_cp.head.transformer.with_cp
    assert not (model.backbone.with_cp or model.head.transformer.with_cp)
    batch = tiny_batch()
    assert_same_training_step(
        model, model_cp, *(lambda m=m: m(batch, mode='loss')['loss']
                           for m in models))


def test_cfg_options_refuse_with_cp_of_a_wrong_type_or_on_seqlstm():
    cfg = Config.fromfile(str(CONFIGS / TINY_CONFIG.format(
        'clip4clip-seqLSTM')))
    with pytest.raises(ConfigOptionError,
                       match=r'model\.backbone\.with_cp=.yes.: expected bool'):
        merge_cfg_options(copy.deepcopy(cfg),
                          {'model.backbone.with_cp': 'yes'})
    with pytest.raises(ConfigOptionError,
                       match=r'model\.head\.with_cp.*not an argument of '
                             r'SeqLSTMHead'):
        merge_cfg_options(copy.deepcopy(cfg), {'model.head.with_cp': True})
