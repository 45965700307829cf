"""Checkpoint conversion (docs/models.md#encoders, #heads and
#checkpoint-formats) against the documented formulas.

For each source layout (an OpenAI ``.pt`` archive, the original CLIP4Clip
``pytorch_model.bin.N``, an mmaction2 checkpoint) the test writes a tiny
stand-in with random weights, converts and loads it, and compares the
retriever's ``sim_matrix`` with scores computed here directly from the raw
source-layout weights: the CLIP towers come from ``openai_reference``, the
heads (seqLSTM, seqTransf, tightTransf, mmaction2's adapters) and the 3-D
patch are written out below from the docs, per video on its real frames only
(equivalent to the -1e6 key mask), without the library's heads.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import openai_reference as ref
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from torch import Tensor, nn

import mmclip4clip  # noqa: F401  (registers every component)
from mmclip4clip.apis import init_retriever
from mmclip4clip.models.checkpoints.export import export_converted
from mmclip4clip.models.checkpoints.retriever import (
    build_converted,
    convert_checkpoint,
    load_source,
)
from mmclip4clip.models.checkpoints.stored_config import (
    NOT_LITERAL,
    config_literals,
    mmaction2_adapter_heads,
)

# The stand-in archives need torch.jit.script, deprecated in recent torch.
pytestmark = pytest.mark.filterwarnings(
    'ignore:`torch.jit.*deprecated:DeprecationWarning')

REPO = Path(__file__).resolve().parents[2]
BASE_CONFIG = REPO / ('configs/retrieval/clip4clip/'
                      'clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb.py')

# A tiny CLIP whose text tower has the cross blocks' shape: embedding D = text
# width = 128, so heads = D // 64 = 2, and 4 text blocks, enough for the
# default n_cross of a head started from CLIP. The image tower is narrower.
D = 128
CLIP_KW = dict(width=D, layers=4, vision_width=64, vision_layers=2, patch=4,
               image_size=16, context_length=16, vocab=64, embed_dim=D, seed=0)
N_CROSS = 2  # blocks of the stand-in heads (not the default 4)
ROWS = 20  # rows of the stand-in heads' position tables (not CLIP's 16)
CROSS_EPS = 1e-12  # LayerNorm eps of the original cross modules
CLIP_EPS = 1e-5  # ... and of CLIP's (and mmaction2's adapter) blocks
HEAD_WIDTH = 64

NUM_WORDS = (0, 3, 7, 10)  # caption lengths; L = 12
SEQ_LEN = 12
T = 5
REAL = (5, 3, 1, 4)  # real frames per video, real first


# ---- inputs -----------------------------------------------------------------
def captions(vocab: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """CLIP-style ids ``[vocab-2, words..., vocab-1, 0...]`` and their mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(NUM_WORDS), SEQ_LEN, dtype=torch.long)
    for i, k in enumerate(NUM_WORDS):
        ids[i, 0] = vocab - 2
        ids[i, 1:k + 1] = torch.randint(1, vocab - 2, (k, ), generator=gen)
        ids[i, k + 1] = vocab - 1
    return ids, (ids != 0).long()


def videos(real: tuple[int, ...], frames: int, size: int,
           seed: int = 1) -> tuple[Tensor, Tensor]:
    """[M, T, 3, S, S] normalised frames, padded frames all zero, + mask."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(real), frames, dtype=torch.long)
    for i, n in enumerate(real):
        mask[i, :n] = 1
    x = torch.randn(len(real), frames, 3, size, size, generator=gen)
    return x * mask[:, :, None, None, None], mask


# ---- reference: the documented formulas on the raw weights ------------------
def strip_clip(sd: dict[str, Tensor], prefix: str = 'clip.') -> dict:
    """The OpenAI-layout CLIP weights stored under ``prefix``."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def prefixed(clip_sd: dict[str, Tensor]) -> dict:
    """OpenAI CLIP weights under ``clip.``, as the original stores them."""
    return {f'clip.{k}': v for k, v in clip_sd.items()}


def layer_norm(x: Tensor, sd: dict[str, Tensor], name: str,
               eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f'{name}.weight'],
                        sd[f'{name}.bias'], eps=eps)


def linear(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    return x @ sd[f'{name}.weight'].t() + sd[f'{name}.bias']


def quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


def attention(x: Tensor, sd: dict[str, Tensor], name: str,
              heads: int | None = None) -> Tensor:
    """Unmasked, non-causal multi-head self-attention of one sequence [S, W]:
    per head softmax(q k^T / sqrt(d)) v, heads = W // 64 unless given."""
    s, width = x.shape
    heads = heads or width // HEAD_WIDTH
    d = width // heads
    qkv = x @ sd[f'{name}.in_proj_weight'].t() + sd[f'{name}.in_proj_bias']
    q, k, v = (t.reshape(s, heads, d).transpose(0, 1)
               for t in qkv.split(width, dim=-1))  # 3 x [H, S, d]
    weights = (q @ k.transpose(1, 2) / math.sqrt(d)).softmax(dim=-1)
    out = (weights @ v).transpose(0, 1).reshape(s, width)
    return linear(out, sd, f'{name}.out_proj')


def blocks(x: Tensor, sd: dict[str, Tensor], prefix: str, eps: float,
           heads: int | None = None) -> Tensor:
    """Pre-LN residual blocks ``{prefix}{i}.*`` (QuickGELU MLP) on [S, W]."""
    i = 0
    while f'{prefix}{i}.ln_1.weight' in sd:
        b = f'{prefix}{i}'
        x = x + attention(layer_norm(x, sd, f'{b}.ln_1', eps), sd, f'{b}.attn',
                          heads)
        h = quick_gelu(linear(layer_norm(x, sd, f'{b}.ln_2', eps), sd,
                              f'{b}.mlp.c_fc'))
        x = x + linear(h, sd, f'{b}.mlp.c_proj')
        i += 1
    assert i > 0, f'no blocks {prefix}*'
    return x


def patch_tokens_2d(clip_sd: dict[str, Tensor], images: Tensor) -> Tensor:
    """[N, 3, S, S] -> [N, G*G, W] tokens of CLIP's 2-D patch conv."""
    conv = clip_sd['visual.conv1.weight']
    x = F.conv2d(images, conv, stride=conv.shape[-1])
    return x.flatten(2).transpose(1, 2)


def patch_tokens_3d(conv3: Tensor, frames: Tensor) -> Tensor:
    """[n, 3, S, S] real frames of one video -> [n, G*G, W]: frame t's
    tokens are sum_k conv2d(frame_{t-1+k}, conv3[:, :, k]), frames outside
    the real ones (edges, padding) being zero."""
    p = conv3.shape[-1]
    n = frames.shape[0]
    out = []
    for t in range(n):
        acc = 0
        for k in range(3):
            s = t - 1 + k
            if 0 <= s < n:
                acc = acc + F.conv2d(frames[s:s + 1], conv3[:, :, k], stride=p)
        out.append(acc)
    return torch.cat(out).flatten(2).transpose(1, 2)


def encode_tokens(clip_sd: dict[str, Tensor], tokens: Tensor) -> Tensor:
    """CLIP's image tower after the patch conv: [N, G*G, W] -> [N, D]."""
    cls = clip_sd['visual.class_embedding'].expand(tokens.shape[0], 1, -1)
    x = torch.cat([cls, tokens], dim=1) + clip_sd['visual.positional_embedding']
    x = layer_norm(x, clip_sd, 'visual.ln_pre', CLIP_EPS)
    x = ref._blocks(x, clip_sd, 'visual.transformer.resblocks.', causal=False)
    return layer_norm(x[:, 0], clip_sd, 'visual.ln_post',
                      CLIP_EPS) @ clip_sd['visual.proj']


def frame_features(clip_sd: dict[str, Tensor], frames: Tensor, mask: Tensor,
                   conv3: Tensor | None = None) -> list[Tensor]:
    """Per video, the [n, D] features of its n real frames."""
    feats = []
    for video, m in zip(frames, mask):
        real = video[:int(m.sum())]
        if conv3 is None:
            feats.append(ref.encode_image(clip_sd, real))
        else:
            feats.append(encode_tokens(clip_sd, patch_tokens_3d(conv3, real)))
    return feats


def pool(g: Tensor) -> Tensor:
    """normalize(mean over frames of normalize(G)) for [n, D] -> [D]."""
    return F.normalize(F.normalize(g, dim=-1).mean(dim=0), dim=-1)


def video_vector(src: dict[str, Tensor], header: str, f: Tensor,
                 eps: float = CROSS_EPS) -> Tensor:
    """A loose head on one video's real frame features [n, D] -> [D]."""
    if header == 'meanP':
        return pool(f)
    if header == 'seqLSTM':
        lstm = nn.LSTM(D, D, batch_first=True)
        lstm.load_state_dict({k: src[f'lstm_visual.{k}'] for k in (
            'weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0')})
        return pool(lstm(f[None])[0][0] + f)
    assert header == 'seqTransf', header
    x = f + src['frame_position_embeddings.weight'][:f.shape[0]]
    return pool(blocks(x, src, 'transformerClip.resblocks.', eps) + f)


def tight_logit(src: dict[str, Tensor], text: Tensor, f: Tensor,
                eps: float = CROSS_EPS) -> Tensor:
    """The cross encoder on [t_eot ; real frames] -> the pair's logit."""
    seq = torch.cat([text[None], f])
    seq = seq + src['cross.embeddings.position_embeddings.weight'][:len(seq)]
    h = blocks(seq, src, 'cross.transformer.resblocks.', eps)
    pooled = layer_norm(h[0], src, 'cross.pooler.ln_pool', eps)
    pooled = quick_gelu(linear(pooled, src, 'cross.pooler.dense'))
    return linear(pooled, src, 'similarity_dense')[0]


@torch.no_grad()
def clip4clip_scores(src: dict[str, Tensor], header: str, ids: Tensor,
                     frames: Tensor, mask: Tensor,
                     eps: float = CROSS_EPS) -> Tensor:
    """[N, M] scores of an original-layout state dict (``clip.*`` + head);
    ``eps``: the head's LayerNorm eps."""
    clip_sd = strip_clip(src)
    text = ref.encode_text(clip_sd, ids)  # [N, D]
    feats = frame_features(clip_sd, frames, mask,
                           src.get('clip.visual.conv2.weight'))
    if header == 'tightTransf':
        return torch.stack([torch.stack([tight_logit(src, t, f, eps)
                                         for f in feats]) for t in text])
    video = torch.stack([video_vector(src, header, f, eps) for f in feats])
    return clip_sd['logit_scale'].exp() * F.normalize(text, dim=-1) @ video.t()


@torch.no_grad()
def mmaction2_scores(sd: dict[str, Tensor], ids: Tensor, frames: Tensor,
                     eps: float = CLIP_EPS, heads: int | None = None) -> Tensor:
    """[N, M] scores of an mmaction2 state dict, all frames real;
    ``eps``: the adapter's LayerNorm eps, ``heads``: its attention heads
    (default width // 64)."""
    clip_sd = strip_clip(sd)
    text = F.normalize(ref.encode_text(clip_sd, ids), dim=-1)
    videos_ = []
    for video in frames:
        f = ref.encode_image(clip_sd, video)  # [T, D], unnormalised
        if 'adapter.positional_embedding' in sd:
            x = f + sd['adapter.positional_embedding']
            f = blocks(x, sd, 'adapter.transformer.resblocks.', eps,
                       heads) + f
        videos_.append(F.normalize(f.mean(dim=0), dim=-1))
    return clip_sd['logit_scale'].exp() * text @ torch.stack(videos_).t()


# ---- stand-in checkpoints ---------------------------------------------------
def randn(gen: torch.Generator, *shape: int, std: float,
          mean: float = 0.0) -> Tensor:
    return torch.randn(*shape, generator=gen) * std + mean


def clip4clip_state_dict(clip_sd: dict[str, Tensor], header: str,
                         conv3d: bool = False, seed: int = 10) -> dict:
    """An original ``pytorch_model.bin.N`` state dict with a ``header`` head
    (and the 3-D patch conv, its outer temporal slices nonzero)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {f'clip.{k}': v.clone() for k, v in clip_sd.items()}
    if conv3d:
        conv1 = clip_sd['visual.conv1.weight']
        conv2 = randn(gen, conv1.shape[0], 3, 3, *conv1.shape[-2:], std=0.1)
        conv2[:, :, 1] = conv1
        sd['clip.visual.conv2.weight'] = conv2
    if header == 'seqLSTM':
        for name, shape in (('weight_ih_l0', (4 * D, D)),
                            ('weight_hh_l0', (4 * D, D)),
                            ('bias_ih_l0', (4 * D, )), ('bias_hh_l0', (4 * D, ))):
            sd[f'lstm_visual.{name}'] = randn(gen, *shape, std=0.1)
        # The original creates the frame table for seqLSTM too, unused.
        sd['frame_position_embeddings.weight'] = randn(gen, 77, D, std=0.5)
    elif header == 'seqTransf':
        sd['frame_position_embeddings.weight'] = randn(gen, ROWS, D, std=0.5)
        sd.update(ref._block_weights(gen, 'transformerClip.resblocks.', D,
                                     N_CROSS))
    elif header == 'tightTransf':
        sd['cross.embeddings.position_embeddings.weight'] = randn(
            gen, ROWS, D, std=0.5)
        sd.update(ref._block_weights(gen, 'cross.transformer.resblocks.', D,
                                     N_CROSS))
        sd['cross.pooler.ln_pool.weight'] = randn(gen, D, std=0.1, mean=1.0)
        sd['cross.pooler.ln_pool.bias'] = randn(gen, D, std=0.05)
        sd['cross.pooler.dense.weight'] = randn(gen, D, D, std=0.1)
        sd['cross.pooler.dense.bias'] = randn(gen, D, std=0.05)
        sd['similarity_dense.weight'] = randn(gen, 1, D, std=0.1)
        sd['similarity_dense.bias'] = randn(gen, 1, std=0.05)
    else:
        assert header == 'meanP', header
    return sd


def mmaction2_state_dict(clip_sd: dict[str, Tensor], adapter: bool,
                         num_segs: int, seed: int = 20) -> dict:
    """mmaction2's ``clip.*`` + ``adapter.*`` (TransformerAdapter) keys."""
    gen = torch.Generator().manual_seed(seed)
    sd = {f'clip.{k}': v.clone() for k, v in clip_sd.items()}
    if adapter:
        sd['adapter.positional_embedding'] = randn(gen, num_segs, D, std=0.5)
        sd.update(ref._block_weights(gen, 'adapter.transformer.resblocks.', D,
                                     N_CROSS))
    return sd


def mmaction2_config_text(num_segs: int, heads: int | None,
                          width: int = D, layers: int = N_CROSS) -> str:
    """The config an mmengine runner stores as ``meta['cfg']``
    (``Config.pretty_text``) for mmaction2's CLIP4Clip; ``heads=None``: the
    SimpleMeanAdapter."""
    adapter = dict(type='SimpleMeanAdapter') if heads is None else dict(
        type='TransformerAdapter', num_segs=num_segs,
        transformer_width=width, transformer_heads=heads,
        transformer_layers=layers)
    return Config(dict(
        model=dict(type='CLIPSimilarity', clip_arch='ViT-B/32',
                   to_float32=True, frozen_layers=0, adapter=adapter),
        train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=5))).pretty_text


def save_mmaction2_checkpoint(path: Path, sd: dict[str, Tensor],
                              cfg_text: str | None) -> None:
    """A runner checkpoint: ``meta`` (with the config text, if given) and
    the state dict."""
    meta = {'epoch': 5} if cfg_text is None else {'epoch': 5, 'cfg': cfg_text}
    torch.save({'meta': meta, 'state_dict': sd}, path)


def load_converted(path: Path, fmt: str, num_heads: int | None = None,
                   **kwargs):
    """load_source -> (mmaction2: adapter heads) -> convert_checkpoint ->
    build_converted, as export_converted does."""
    source = load_source(str(path), fmt)
    if fmt == 'mmaction2':
        num_heads = mmaction2_adapter_heads(str(path), source, num_heads)
    state_dict, model_cfg = convert_checkpoint(source, fmt,
                                               num_heads=num_heads, **kwargs)
    return build_converted(state_dict, model_cfg), model_cfg


def assert_scores_close(actual: Tensor, expected: Tensor) -> None:
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * scale)


def assert_differ(a: Tensor, b: Tensor, frac: float = 0.05) -> None:
    """The two score matrices differ by more than ``frac`` of their scale."""
    scale = max(a.abs().max().item(), b.abs().max().item())
    assert (a - b).abs().max().item() > frac * scale


@pytest.fixture(scope='module')
def clip_sd() -> dict[str, Tensor]:
    return ref.make_openai_state_dict(**CLIP_KW)


@pytest.fixture(scope='module')
def inputs(clip_sd) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    ids, attn = captions(CLIP_KW['vocab'])
    frames, mask = videos(REAL, T, CLIP_KW['image_size'])
    return ids, attn, frames, mask


@pytest.fixture(scope='module')
def openai_archive(clip_sd, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('openai') / 'ViT-test.pt'
    ref.save_openai_torchscript(clip_sd, str(path))
    return path


# ---- the reference itself ---------------------------------------------------
def test_reference_patch_helpers(clip_sd):
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        encode_tokens(clip_sd, patch_tokens_2d(clip_sd, images)),
        ref.encode_image(clip_sd, images), rtol=1e-5, atol=1e-5)
    conv1 = clip_sd['visual.conv1.weight']
    conv3 = torch.zeros(conv1.shape[0], 3, 3, *conv1.shape[-2:])
    conv3[:, :, 1] = conv1
    torch.testing.assert_close(patch_tokens_3d(conv3, images),
                               patch_tokens_2d(clip_sd, images))
    # A neighbour-only kernel: frame 0 sees frame 1, the last one frame 1.
    side = torch.zeros_like(conv3)
    side[:, :, 2] = conv1
    tokens = patch_tokens_3d(side, images)
    torch.testing.assert_close(tokens[0], patch_tokens_2d(clip_sd, images[1:2])[0])
    assert tokens[2].abs().max() == 0


# ---- 1. OpenAI archive ------------------------------------------------------
def test_openai_archive_meanP(clip_sd, openai_archive, inputs):
    ids, attn, frames, mask = inputs
    model, cfg = load_converted(openai_archive, 'openai')
    assert cfg['head'] == dict(type='MeanPHead')
    assert cfg['backbone']['linear_patch'] == '2d'
    expected = clip4clip_scores(prefixed(clip_sd), 'meanP', ids, frames,
                                mask)
    assert_scores_close(model.sim_matrix(ids, attn, frames, mask), expected)
    # Independently of clip4clip_scores: the brief's meanP formula.
    text = F.normalize(ref.encode_text(clip_sd, ids), dim=-1)
    vids = []
    for video, m in zip(frames, mask):
        f = F.normalize(ref.encode_image(clip_sd, video), dim=-1)
        vids.append(F.normalize((f * m[:, None]).sum(0) / m.sum(), dim=-1))
    direct = clip_sd['logit_scale'].exp() * text @ torch.stack(vids).t()
    assert_scores_close(expected, direct)


def test_openai_archive_seqTransf_starts_from_clip_text_tower(
        clip_sd, openai_archive, inputs):
    ids, attn, frames, mask = inputs
    model, cfg = load_converted(openai_archive, 'openai',
                                sim_header='seqTransf')
    head = model.head
    assert cfg['head']['type'] == 'SeqTransfHead'
    assert cfg['head']['num_heads'] == D // 64 == 2
    table = head.frame_position_embeddings.weight
    assert table.shape == clip_sd['positional_embedding'].shape
    torch.testing.assert_close(table, clip_sd['positional_embedding'],
                               rtol=0, atol=0)
    assert len(head.transformer.resblocks) == 4
    for i in (0, 3):
        ours, theirs = head.transformer.resblocks[i], f'transformer.resblocks.{i}.'
        for name, value in [
                ('attn.in_proj_weight', ours.attn.in_proj_weight),
                ('attn.in_proj_bias', ours.attn.in_proj_bias),
                ('attn.out_proj.weight', ours.attn.out_proj.weight),
                ('ln_1.weight', ours.ln_1.weight),
                ('mlp.c_fc.weight', ours.mlp.c_fc.weight),
                ('mlp.c_proj.bias', ours.mlp.c_proj.bias)]:
            torch.testing.assert_close(value, clip_sd[theirs + name], rtol=0,
                                       atol=0)
    # The scores are seqTransf's formula with CLIP's text table and blocks.
    src = prefixed(clip_sd)
    src['frame_position_embeddings.weight'] = clip_sd['positional_embedding']
    src.update({f'transformerClip.{k[len("transformer."):]}': v
                for k, v in clip_sd.items()
                if k.startswith(tuple(f'transformer.resblocks.{i}.'
                                      for i in range(4)))})
    expected = clip4clip_scores(src, 'seqTransf', ids, frames, mask)
    assert_scores_close(model.sim_matrix(ids, attn, frames, mask), expected)
    assert_differ(expected, clip4clip_scores(src, 'meanP', ids, frames, mask))


def test_openai_archive_3d_starts_from_2d_kernel(clip_sd, openai_archive,
                                                 inputs):
    ids, attn, frames, mask = inputs
    model, cfg = load_converted(openai_archive, 'openai', linear_patch='3d')
    assert cfg['backbone']['linear_patch'] == '3d'
    conv2 = model.backbone.conv2.weight
    assert conv2.shape == (64, 3, 3, 4, 4)
    torch.testing.assert_close(conv2[:, :, 1], clip_sd['visual.conv1.weight'],
                               rtol=0, atol=0)
    assert conv2[:, :, 0].abs().max() == 0 and conv2[:, :, 2].abs().max() == 0
    expected = clip4clip_scores(prefixed(clip_sd), 'meanP', ids, frames,
                                mask)
    assert_scores_close(model.sim_matrix(ids, attn, frames, mask), expected)


# ---- 2. original CLIP4Clip --------------------------------------------------
@pytest.mark.parametrize('header', ['meanP', 'seqLSTM', 'seqTransf',
                                    'tightTransf'])
def test_clip4clip_checkpoint(header, clip_sd, inputs, tmp_path):
    ids, attn, frames, mask = inputs
    src = clip4clip_state_dict(clip_sd, header)
    path = tmp_path / 'pytorch_model.bin.2'
    torch.save(src, path)
    model, cfg = load_converted(path, 'clip4clip')
    assert cfg['backbone']['linear_patch'] == '2d'
    head = cfg['head']
    if header in ('seqTransf', 'tightTransf'):
        assert head['num_layers'] == N_CROSS and head['max_positions'] == ROWS
        assert head['num_heads'] == 2
    expected = clip4clip_scores(src, header, ids, frames, mask)
    assert_scores_close(model.sim_matrix(ids, attn, frames, mask), expected)
    # The head matters: its scores are not meanP's (nor constant).
    if header == 'tightTransf':
        assert expected.std(dim=0).min() > 0.01 and expected.std(dim=1).min() > 0.01
    elif header != 'meanP':
        assert_differ(expected, clip4clip_scores(src, 'meanP', ids, frames,
                                                 mask))
    # Asking for the head the weights hold is fine; another one is an error.
    convert_checkpoint(src, 'clip4clip', sim_header=header)
    other = 'seqLSTM' if header == 'meanP' else 'meanP'
    with pytest.raises(ValueError, match=header):
        convert_checkpoint(src, 'clip4clip', sim_header=other)


@pytest.mark.parametrize('header', ['meanP', 'seqTransf'])
def test_clip4clip_3d_checkpoint(header, clip_sd, inputs, tmp_path):
    ids, attn, frames, mask = inputs
    src = clip4clip_state_dict(clip_sd, header, conv3d=True)
    path = tmp_path / 'pytorch_model.bin.4'
    torch.save(src, path)
    model, cfg = load_converted(path, 'clip4clip')
    assert cfg['backbone']['linear_patch'] == '3d'
    torch.testing.assert_close(model.backbone.conv2.weight,
                               src['clip.visual.conv2.weight'], rtol=0, atol=0)
    expected = clip4clip_scores(src, header, ids, frames, mask)
    assert_scores_close(model.sim_matrix(ids, attn, frames, mask), expected)
    # The outer temporal slices matter: 3d is not 2d here.
    flat = {k: v for k, v in src.items() if k != 'clip.visual.conv2.weight'}
    assert_differ(expected, clip4clip_scores(flat, header, ids, frames, mask))
    with pytest.raises(ValueError, match='conv2'):
        convert_checkpoint(src, 'clip4clip', linear_patch='2d')


@pytest.mark.parametrize('key, where', [
    ('visual_head.weight', 'convert'),
    ('lstm_visual.weight_ih_l0', 'convert'),  # a second head's weights
    ('clip.extra_head.weight', 'convert'),  # under clip. but no CLIP module
    ('transformerClip.resblocks.0.attn.bias_k', 'build'),
])
def test_clip4clip_unknown_key_is_an_error(key, where, clip_sd):
    src = clip4clip_state_dict(clip_sd, 'seqTransf')
    src[key] = torch.zeros(3)
    if where == 'convert':
        with pytest.raises(KeyError, match=key.replace('.', r'\.')):
            convert_checkpoint(src, 'clip4clip')
    else:
        state_dict, model_cfg = convert_checkpoint(src, 'clip4clip')
        with pytest.raises(KeyError, match=r'resblocks\.0\.attn\.bias_k'):
            build_converted(state_dict, model_cfg)


def test_clip4clip_wrapped_and_module_prefixed_checkpoints_load(clip_sd,
                                                                tmp_path):
    src = clip4clip_state_dict(clip_sd, 'tightTransf')
    module = {f'module.{k}': v for k, v in src.items()}
    for name, obj in [('plain', src), ('wrapped', {'state_dict': src}),
                      ('module', module), ('both', {'state_dict': module})]:
        path = tmp_path / f'{name}.bin'
        torch.save(obj, path)
        loaded = load_source(str(path), 'clip4clip')
        assert set(loaded) == set(src), name
        assert all(torch.equal(loaded[k], v) for k, v in src.items()), name
    state_dict, model_cfg = convert_checkpoint(loaded, 'clip4clip')
    assert model_cfg['head']['type'] == 'TightTransfHead'


# ---- 3. mmaction2 -----------------------------------------------------------
@pytest.mark.parametrize('adapter', [False, True], ids=['mean', 'transformer'])
def test_mmaction2_checkpoint(adapter, clip_sd, tmp_path):
    num_segs = 4
    ids, attn = captions(CLIP_KW['vocab'], seed=5)
    frames, mask = videos((num_segs, ) * 3, num_segs, CLIP_KW['image_size'],
                          seed=6)
    sd = mmaction2_state_dict(clip_sd, adapter, num_segs)
    path = tmp_path / 'epoch_5.pth'
    save_mmaction2_checkpoint(path, sd, mmaction2_config_text(
        num_segs, 2 if adapter else None))
    model, cfg = load_converted(path, 'mmaction2')
    if adapter:
        assert cfg['head'] == dict(type='MMAction2TransformerHead',
                                   num_segs=num_segs, embed_dim=D,
                                   num_layers=N_CROSS, num_heads=2)
    else:
        assert cfg['head'] == dict(type='MMAction2MeanHead')
    expected = mmaction2_scores(sd, ids, frames)
    assert_scores_close(model.sim_matrix(ids, attn, frames, mask), expected)
    # mmaction2's arithmetic is not the original meanP's.
    meanp = clip4clip_scores(sd, 'meanP', ids, frames, mask)
    assert_differ(expected, meanp, frac=0.01)
    if adapter:
        assert_differ(expected, mmaction2_scores(
            {k: v for k, v in sd.items() if not k.startswith('adapter.')},
            ids, frames))


def test_mmaction2_max_frames_must_equal_num_segs(clip_sd, tmp_path):
    sd = mmaction2_state_dict(clip_sd, True, num_segs=4)
    path = tmp_path / 'epoch_5.pth'
    save_mmaction2_checkpoint(path, sd, mmaction2_config_text(4, 2))
    with pytest.raises(ValueError, match='--max-frames 4'):
        export_converted(str(path), str(tmp_path / 'bad'), 'mmaction2',
                         str(BASE_CONFIG), max_frames=6, max_words=12)
    ckpt, cfg = export_converted(str(path), str(tmp_path / 'out'), 'mmaction2',
                                 str(BASE_CONFIG), max_frames=4, max_words=12)
    assert ckpt.is_file() and cfg.is_file()


def test_mmaction2_adapter_heads_come_from_the_stored_config(clip_sd,
                                                            tmp_path):
    """The weights do not fix the TransformerAdapter's head count: it is read
    from the config the runner stored (parsed, never run), --num-heads
    overrides it, and without either the conversion is refused."""
    num_segs, heads = 4, 4  # width // 64 would be 2
    ids, attn = captions(CLIP_KW['vocab'], seed=11)
    frames, mask = videos((num_segs, ) * 3, num_segs, CLIP_KW['image_size'],
                          seed=12)
    sd = mmaction2_state_dict(clip_sd, True, num_segs)
    expected = mmaction2_scores(sd, ids, frames, heads=heads)
    per_64 = mmaction2_scores(sd, ids, frames, heads=D // 64)
    assert_differ(expected, per_64, frac=0.01)

    # Code in the stored text would create these paths if it ran.
    ran = [tmp_path / 'statement_ran', tmp_path / 'value_ran']
    text = (f'import os\nos.mkdir({str(ran[0])!r})\n'
            + mmaction2_config_text(num_segs, heads)
            + f'work_dir = os.mkdir({str(ran[1])!r})\n')
    path = tmp_path / 'epoch_5.pth'
    save_mmaction2_checkpoint(path, sd, text)
    model, cfg = load_converted(path, 'mmaction2')
    assert cfg['head']['num_heads'] == heads
    assert_scores_close(model.sim_matrix(ids, attn, frames, mask), expected)
    assert not any(p.exists() for p in ran)

    with pytest.warns(UserWarning, match='transformer_heads=4'):
        model, cfg = load_converted(path, 'mmaction2', num_heads=2)
    assert cfg['head']['num_heads'] == 2
    assert_scores_close(model.sim_matrix(ids, attn, frames, mask), per_64)

    bare = tmp_path / 'bare.pth'
    save_mmaction2_checkpoint(bare, sd, None)
    with pytest.raises(ValueError, match=r'bare\.pth .*--num-heads'):
        load_converted(bare, 'mmaction2')
    _, cfg = load_converted(bare, 'mmaction2', num_heads=heads)
    assert cfg['head']['num_heads'] == heads
    # The converter itself never guesses.
    with pytest.raises(ValueError, match='num_heads'):
        convert_checkpoint(load_source(str(bare), 'mmaction2'), 'mmaction2')


@pytest.mark.parametrize('case, match', [
    ('other_width', r'transformer_width=256.*128'),
    ('other_layers', r'transformer_layers=3.*2'),
    ('heads_not_literal', r'transformer_heads.*--num-heads'),
    ('heads_not_dividing', r'3 heads.*128'),
    ('mean_adapter', 'SimpleMeanAdapter'),
])
def test_mmaction2_stored_config_that_does_not_fit_is_refused(
        case, match, clip_sd, tmp_path):
    sd = mmaction2_state_dict(clip_sd, True, num_segs=4)
    text = {
        'other_width': mmaction2_config_text(4, 2, width=256),
        'other_layers': mmaction2_config_text(4, 2, layers=3),
        'heads_not_literal': mmaction2_config_text(4, 2).replace(
            'transformer_heads=2', 'transformer_heads=len("ab")'),
        'heads_not_dividing': mmaction2_config_text(4, 3),
        'mean_adapter': mmaction2_config_text(4, None),
    }[case]
    path = tmp_path / f'{case}.pth'
    save_mmaction2_checkpoint(path, sd, text)
    with pytest.raises(ValueError, match=rf'{case}\.pth.*{match}'):
        load_converted(path, 'mmaction2')


def test_mmaction2_num_heads_applies_to_its_adapter_only(clip_sd, tmp_path):
    sd = mmaction2_state_dict(clip_sd, False, num_segs=4)
    path = tmp_path / 'mean.pth'
    save_mmaction2_checkpoint(path, sd, mmaction2_config_text(4, None))
    with pytest.raises(ValueError, match=r'mean\.pth.*no TransformerAdapter'):
        load_converted(path, 'mmaction2', num_heads=2)
    with pytest.raises(ValueError, match='mmaction2'):
        convert_checkpoint(clip4clip_state_dict(clip_sd, 'seqTransf'),
                           'clip4clip', num_heads=2)


def test_config_literals_never_run_the_text():
    text = (
        'import os\n'
        'model = dict(type="M", heads=-4, sizes=[1, 2.5], pair=(1, None), '
        'table={"a": True}, made=os.getcwd(), **extra)\n'
        'lr = 1e-05\n'
        'os.mkdir("x")\n'
        'lr = 2e-05\n')
    found = config_literals(text)
    assert found == {'model': NOT_LITERAL, 'lr': 2e-05}
    found = config_literals(text.replace(', **extra', ''))
    assert found['model'] == dict(type='M', heads=-4, sizes=[1, 2.5],
                                  pair=(1, None), table={'a': True},
                                  made=NOT_LITERAL)


# ---- LayerNorm eps of the heads --------------------------------------------
@pytest.mark.parametrize('header', ['seqTransf', 'tightTransf', 'mmaction2'])
def test_head_layer_norm_eps(header, clip_sd, tmp_path):
    """With features and position rows ~1e-3 the heads' LayerNorm eps shows:
    1e-12 in the original's cross modules, 1e-5 in mmaction2's adapter."""
    small = dict(clip_sd)
    for key in ('visual.proj', 'text_projection'):
        small[key] = clip_sd[key] * 1e-3
    ids, attn = captions(CLIP_KW['vocab'], seed=9)
    if header == 'mmaction2':
        frames, mask = videos((4, 4, 4), 4, CLIP_KW['image_size'], seed=9)
        sd = mmaction2_state_dict(small, True, num_segs=4)
        sd['adapter.positional_embedding'] *= 1e-3
        save_mmaction2_checkpoint(tmp_path / 'a.pth', sd,
                                  mmaction2_config_text(4, 2))
        expected = mmaction2_scores(sd, ids, frames)
        other = mmaction2_scores(sd, ids, frames, eps=CROSS_EPS)
    else:
        frames, mask = videos(REAL, T, CLIP_KW['image_size'], seed=9)
        sd = clip4clip_state_dict(small, header)
        for key in ('frame_position_embeddings.weight',
                    'cross.embeddings.position_embeddings.weight'):
            if key in sd:
                sd[key] = sd[key] * 1e-3
        torch.save(sd, tmp_path / 'a.pth')
        expected = clip4clip_scores(sd, header, ids, frames, mask)
        other = clip4clip_scores(sd, header, ids, frames, mask, eps=CLIP_EPS)
    assert_differ(expected, other, frac=0.01)
    fmt = 'mmaction2' if header == 'mmaction2' else 'clip4clip'
    model, _ = load_converted(tmp_path / 'a.pth', fmt)
    assert_scores_close(model.sim_matrix(ids, attn, frames, mask), expected)


def test_export_leaves_no_partial_output(clip_sd, tmp_path, monkeypatch):
    """A write that fails half-way leaves no model.pth under its real name."""
    path = tmp_path / 'pytorch_model.bin.1'
    torch.save(clip4clip_state_dict(clip_sd, 'meanP'), path)

    def save_half(obj, f) -> None:
        Path(f).write_bytes(b'PK\x03\x04 only the start')
        raise OSError('No space left on device')

    monkeypatch.setattr(torch, 'save', save_half)
    out = tmp_path / 'out'
    with pytest.raises(OSError, match='No space left'):
        export_converted(str(path), str(out), 'clip4clip', str(BASE_CONFIG),
                         max_words=12, max_frames=6)
    assert list(out.iterdir()) == []


# ---- 4. the command-line tool -----------------------------------------------
def run_convert_tool(src: Path, out: Path,
                     *args: str) -> subprocess.CompletedProcess:
    """``tools/convert_checkpoint.py SRC OUT ARGS`` on the tiny base config."""
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join(
                   [str(REPO), os.environ.get('PYTHONPATH', '')]))
    return subprocess.run([
        sys.executable, 'tools/convert_checkpoint.py', str(src), str(out),
        *args, '--base-config', str(BASE_CONFIG)
    ], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def convert_in_process(load_tool, monkeypatch, src: Path, out: Path,
                       *args: str) -> None:
    """``tools/convert_checkpoint.py SRC OUT ARGS`` on the tiny base config,
    as its main() in this process (the end-to-end test below runs the tool
    as a user does); a refusal raises SystemExit with the tool's message."""
    tool = load_tool('tools/convert_checkpoint.py')
    monkeypatch.setattr(sys, 'argv', [
        'convert_checkpoint.py', str(src), str(out), *args,
        '--base-config', str(BASE_CONFIG)])
    tool.main()


def test_convert_tool_reads_openai_archive_without_its_code(
        clip_sd, openai_archive, tmp_path, load_tool, monkeypatch):
    """Read as data, the archive converts exactly as through torch.jit.load
    (the --allow-pickle path, as before); an archive whose __setstate__
    runs at load is refused with nothing run and nothing written."""
    args = ('--format', 'openai', '--sim-header', 'seqTransf',
            '--max-words', '12', '--max-frames', '6')
    outputs = {}
    for name, extra in [('safe', ()), ('jit', ('--allow-pickle', ))]:
        out = tmp_path / name
        convert_in_process(load_tool, monkeypatch, openai_archive, out,
                           *args, *extra)
        ckpt = torch.load(out / 'model.pth', map_location='cpu',
                          weights_only=True)
        outputs[name] = (ckpt['state_dict'], (out / 'config.py').read_text())
    (safe_sd, safe_cfg), (jit_sd, jit_cfg) = outputs['safe'], outputs['jit']
    assert safe_cfg == jit_cfg
    assert list(safe_sd) == list(jit_sd)
    for key, value in jit_sd.items():
        assert safe_sd[key].dtype == value.dtype, key
        assert torch.equal(safe_sd[key], value), key

    marker = tmp_path / 'code_ran'
    loud = tmp_path / 'ViT-loud.pt'
    ref.save_openai_torchscript(clip_sd, str(loud), load_marker=str(marker))
    # sys.exit(message): a process prints the message and exits with 1.
    with pytest.raises(SystemExit) as refused:
        convert_in_process(load_tool, monkeypatch, loud, tmp_path / 'loud',
                           *args)
    message = refused.value.code
    assert isinstance(message, str) and '\n' not in message, message
    assert message.startswith(f'error: {loud} cannot be read'), message
    assert '__setstate__' in message and '--allow-pickle' in message
    assert not marker.exists()
    assert not (tmp_path / 'loud').exists()


def test_convert_tool_end_to_end(clip_sd, tmp_path):
    src = clip4clip_state_dict(clip_sd, 'seqTransf', seed=30)
    path = tmp_path / 'pytorch_model.bin.1'
    torch.save(src, path)
    out = tmp_path / 'converted'
    max_words, max_frames = 12, 6
    proc = run_convert_tool(path, out, '--format', 'clip4clip',
                            '--max-words', str(max_words),
                            '--max-frames', str(max_frames))
    assert proc.returncode == 0, proc.stderr[-3000:]

    cfg = Config.fromfile(str(out / 'config.py'))
    assert cfg.model.head.type == 'SeqTransfHead'
    assert cfg.model.head.max_positions == ROWS
    assert cfg.model.head.num_layers == N_CROSS
    expected = dict(CLIPResizeCrop=('size', CLIP_KW['image_size']),
                    TokenizeCaptions=('max_words', max_words),
                    SampleFramesByRate=('max_frames', max_frames))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        pipeline = cfg[loader].dataset.pipeline
        for kind, (arg, value) in expected.items():
            found = [t for t in pipeline if t.type == kind]
            assert len(found) == 1 and found[0][arg] == value, (loader, kind)

    model = init_retriever(out / 'config.py', out / 'model.pth')
    ids, attn = captions(CLIP_KW['vocab'], seed=7)
    frames, mask = videos((6, 2, 4), max_frames, CLIP_KW['image_size'], seed=8)
    scores = clip4clip_scores(src, 'seqTransf', ids, frames, mask)
    assert_scores_close(model.sim_matrix(ids, attn, frames, mask), scores)
