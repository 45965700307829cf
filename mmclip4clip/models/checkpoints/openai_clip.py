"""OpenAI CLIP checkpoints (``ViT-B-32.pt`` and kin) as Hugging Face CLIPModels.

OpenAI's ``clip`` package ships TorchScript archives whose ``state_dict()``
uses the layout of its own ``CLIP`` module (W = tower width, D = embedding
size, L = context length, V = vocabulary size, P = patch size, G = grid):

- text tower: ``token_embedding.weight`` [V, W], ``positional_embedding``
  [L, W], ``transformer.resblocks.{i}.*`` (causal pre-LN blocks),
  ``ln_final.*`` [W], ``text_projection`` [W, D] (used as ``x @ proj``);
- image tower: ``visual.conv1.weight`` [W, 3, P, P] (no bias),
  ``visual.class_embedding`` [W], ``visual.positional_embedding``
  [G*G + 1, W], ``visual.ln_pre.*``, ``visual.transformer.resblocks.{i}.*``,
  ``visual.ln_post.*``, ``visual.proj`` [W, D];
- ``logit_scale``: the log of the softmax temperature's inverse, a scalar;
- each block: ``attn.in_proj_weight`` [3W, W] / ``attn.in_proj_bias`` [3W]
  (q, k, v stacked in that order, as in ``nn.MultiheadAttention``),
  ``attn.out_proj.*``, ``ln_1.*``, ``mlp.c_fc.*`` [4W, W], ``mlp.c_proj.*``,
  ``ln_2.*``.

The archives also hold three non-weight entries (``input_resolution``,
``context_length``, ``vocab_size``) and store most weights in fp16.

Hugging Face's ``CLIPModel`` holds the same numbers under other names
(``text_model.*``, ``vision_model.*``, ``text_projection.weight``,
``visual_projection.weight``), with q, k and v as three separate linears and
the two projections as ``nn.Linear`` weights, i.e. transposed ([D, W]). The
functions here rename, split and transpose; nothing is approximated, so the
converted model computes OpenAI's features exactly (up to float rounding).

CLIP4Clip and mmaction2 checkpoints store the same CLIP keys behind a
``clip.`` prefix next to their own modules, hence the ``prefix`` arguments.
"""
from __future__ import annotations

import math
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .torchscript import is_torchscript_archive, read_torchscript_state_dict

if TYPE_CHECKING:  # transformers is imported where a CLIP is built
    from transformers import CLIPModel

__all__ = [
    'load_openai_state_dict', 'openai_clip_config', 'openai_to_hf',
    'clip_from_openai'
]

# Entries of OpenAI's TorchScript archives that are metadata, not weights.
_NON_WEIGHT_KEYS = ('input_resolution', 'context_length', 'vocab_size')

# First key components of OpenAI's CLIP module: a key starting with one of
# these (after the prefix) is a CLIP key and must be converted.
CLIP_ROOTS = frozenset({
    'token_embedding', 'positional_embedding', 'transformer', 'ln_final',
    'text_projection', 'visual', 'logit_scale'
})

# One residual block, OpenAI suffix -> Hugging Face suffix (in_proj aside).
_BLOCK_RENAMES = {
    'attn.out_proj.weight': 'self_attn.out_proj.weight',
    'attn.out_proj.bias': 'self_attn.out_proj.bias',
    'ln_1.weight': 'layer_norm1.weight',
    'ln_1.bias': 'layer_norm1.bias',
    'mlp.c_fc.weight': 'mlp.fc1.weight',
    'mlp.c_fc.bias': 'mlp.fc1.bias',
    'mlp.c_proj.weight': 'mlp.fc2.weight',
    'mlp.c_proj.bias': 'mlp.fc2.bias',
    'ln_2.weight': 'layer_norm2.weight',
    'ln_2.bias': 'layer_norm2.bias',
}

# Keys outside the blocks that are a plain rename.
_PLAIN_RENAMES = {
    'token_embedding.weight': 'text_model.embeddings.token_embedding.weight',
    'positional_embedding': 'text_model.embeddings.position_embedding.weight',
    'ln_final.weight': 'text_model.final_layer_norm.weight',
    'ln_final.bias': 'text_model.final_layer_norm.bias',
    'logit_scale': 'logit_scale',
    'visual.conv1.weight': 'vision_model.embeddings.patch_embedding.weight',
    'visual.class_embedding': 'vision_model.embeddings.class_embedding',
    'visual.positional_embedding':
        'vision_model.embeddings.position_embedding.weight',
    # Hugging Face really spells it "pre_layrnorm".
    'visual.ln_pre.weight': 'vision_model.pre_layrnorm.weight',
    'visual.ln_pre.bias': 'vision_model.pre_layrnorm.bias',
    'visual.ln_post.weight': 'vision_model.post_layernorm.weight',
    'visual.ln_post.bias': 'vision_model.post_layernorm.bias',
}

# OpenAI [W, D] matrices used as ``x @ proj`` -> nn.Linear weights [D, W].
_TRANSPOSED_RENAMES = {
    'text_projection': 'text_projection.weight',
    'visual.proj': 'visual_projection.weight',
}

# OpenAI block prefix -> Hugging Face encoder-layer prefix, per tower.
_TOWERS = {
    'transformer.resblocks.': 'text_model.encoder.layers.',
    'visual.transformer.resblocks.': 'vision_model.encoder.layers.',
}

# OpenAI uses one attention head per 64 channels in both towers.
_HEAD_WIDTH = 64


def load_openai_state_dict(path: str,
                           allow_pickle: bool = False) -> dict[str, Tensor]:
    """Read an OpenAI CLIP checkpoint file into a float32 state dict.

    TorchScript archives (what OpenAI's ``clip`` package downloads) are read
    as data by :func:`read_torchscript_state_dict`, without running their
    code, and must hold OpenAI CLIP's keys only; anything else is tried as a
    plain ``torch.save`` state dict (possibly nested under ``'state_dict'``)
    with ``weights_only=True``. ``allow_pickle`` says the file is trusted:
    archives are then loaded with ``torch.jit.load`` (which runs an archive's
    ``__setstate__`` code) and plain files without ``weights_only``. The
    metadata entries ``input_resolution``, ``context_length`` and
    ``vocab_size`` are dropped and floating-point tensors are cast to float32
    (the archives store fp16).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: ``path`` is neither a TorchScript archive nor a state
            dict of tensors, or (without ``allow_pickle``) an archive whose
            state only its own code can rebuild or whose modules are not
            OpenAI CLIP's.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no CLIP checkpoint file at {path!r}')
    trust_hint = ('if you trust the file, load it with allow_pickle=True '
                  '(convert_checkpoint.py --allow-pickle)')
    archive = is_torchscript_archive(path)
    if archive and allow_pickle:
        with warnings.catch_warnings():
            # torch 2.10+ deprecates TorchScript, yet OpenAI ships only that.
            warnings.filterwarnings('ignore', category=DeprecationWarning,
                                    message='.*torch.jit.load.*')
            state = torch.jit.load(path, map_location='cpu').state_dict()
    elif archive:
        try:
            state = read_torchscript_state_dict(path)
        except ValueError as err:
            raise ValueError(f'{err}; {trust_hint}') from err
        stray = [key for key in state if key not in _NON_WEIGHT_KEYS
                 and key.split('.', 1)[0] not in CLIP_ROOTS]
        if stray:
            raise ValueError(
                f'{path} is a TorchScript archive of another model than '
                f'OpenAI CLIP: keys {stray[:5]} belong to no CLIP module; '
                f'{trust_hint}')
    else:
        try:
            state = torch.load(path, map_location='cpu',
                               weights_only=not allow_pickle)
        except pickle.UnpicklingError as err:
            # torch names the refused global on one line of its message.
            culprit = next((line.strip() for line in str(err).splitlines()
                            if 'GLOBAL' in line), f'{err!s:.200}')
            raise ValueError(
                f'{path} holds pickled objects other than tensors and plain '
                f'containers ({culprit}); {trust_hint}') from err
        except Exception as err:
            raise ValueError(
                f'{path!r} is not a CLIP checkpoint: it is neither a '
                f'TorchScript archive nor a torch.save state dict '
                f'({err!s:.200})') from err
        if isinstance(state, Mapping) and 'state_dict' in state:
            state = state['state_dict']
    if not isinstance(state, Mapping):
        raise ValueError(f'{path!r} holds a {type(state).__name__}, not a '
                         'state dict')
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in _NON_WEIGHT_KEYS:
            continue
        if not isinstance(value, Tensor):
            raise ValueError(f'{path!r} is not a state dict of tensors: entry '
                             f'{key!r} is a {type(value).__name__}')
        value = value.detach()
        out[key] = value.float() if value.is_floating_point() else value
    return out


def _get(sd: Mapping[str, Tensor], prefix: str, name: str) -> Tensor:
    """``sd[prefix + name]`` with an error that hints at a wrong prefix."""
    key = prefix + name
    if key not in sd:
        hint = ''
        others = sorted({k[:-len(name)] for k in sd if k.endswith('.' + name)
                         or k == name})
        if others:
            hint = f' (keys with prefix {others[0]!r} exist: pass that prefix)'
        elif any(k.startswith(prefix + 'visual.layer') for k in sd):
            hint = ' (this is a ResNet CLIP; only ViT CLIPs are supported)'
        raise KeyError(f'no OpenAI CLIP key {key!r} in the state dict{hint}')
    return sd[key]


def num_blocks(sd: Mapping[str, Tensor], block_prefix: str,
               required: bool = True) -> int:
    """Number of residual blocks ``{block_prefix}{i}.*``, checked to be
    numbered 0..n-1; a KeyError when there is none, unless not
    ``required`` (then 0)."""
    pattern = re.compile(re.escape(block_prefix) + r'(\d+)\.')
    indices = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    if not indices and not required:
        return 0
    if not indices:
        raise KeyError(f'no residual blocks {block_prefix}{{i}}.* in the '
                       'state dict')
    if indices != set(range(len(indices))):
        raise ValueError(f'residual blocks {block_prefix}{{i}} are not '
                         f'numbered 0..n-1: {sorted(indices)}')
    return len(indices)


def openai_clip_config(sd: Mapping[str, Tensor], prefix: str = '') -> dict:
    """``transformers.CLIPConfig`` kwargs read off OpenAI CLIP weight shapes.

    Follows OpenAI's ``build_model``: widths, patch size, grid, context
    length, vocabulary and layer counts come from the tensors' shapes;
    heads are ``width // 64`` in both towers. The start and end of text are
    the last two ids of the vocabulary (the end token has the largest id)
    and 0 pads, as in CLIP's tokenizer.

    Args:
        sd: an OpenAI-layout state dict (``visual.conv1.weight``...).
        prefix: prepended to every OpenAI key, e.g. ``'clip.'`` for
            CLIP4Clip / mmaction2 checkpoints.
    """
    conv1 = _get(sd, prefix, 'visual.conv1.weight')  # [Wv, C, P, P]
    vision_width, num_channels, patch = conv1.shape[0], conv1.shape[1], \
        conv1.shape[-1]
    vision_rows = _get(sd, prefix, 'visual.positional_embedding').shape[0]
    grid = round(math.sqrt(vision_rows - 1))
    if grid * grid + 1 != vision_rows:
        raise ValueError(f'{prefix}visual.positional_embedding has '
                         f'{vision_rows} rows, not a square grid plus one')
    embed_dim = _get(sd, prefix, 'text_projection').shape[1]  # [W, D]
    visual_dim = _get(sd, prefix, 'visual.proj').shape[1]  # [Wv, D]
    if visual_dim != embed_dim:
        raise ValueError(f'text and image embeddings differ in size '
                         f'({embed_dim} vs {visual_dim}); CLIPConfig has one '
                         'projection_dim')
    context_length = _get(sd, prefix, 'positional_embedding').shape[0]
    vocab_size = _get(sd, prefix, 'token_embedding.weight').shape[0]
    text_width = _get(sd, prefix, 'ln_final.weight').shape[0]
    text_prefix = prefix + 'transformer.resblocks.'
    vision_prefix = prefix + 'visual.transformer.resblocks.'
    shared = dict(hidden_act='quick_gelu', layer_norm_eps=1e-5,
                  projection_dim=embed_dim)
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=text_width,
        intermediate_size=_get(sd, text_prefix, '0.mlp.c_fc.weight').shape[0],
        num_hidden_layers=num_blocks(sd, text_prefix),
        num_attention_heads=text_width // _HEAD_WIDTH,
        max_position_embeddings=context_length,
        pad_token_id=0,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        **shared)
    vision_config = dict(
        hidden_size=vision_width,
        intermediate_size=_get(sd, vision_prefix,
                               '0.mlp.c_fc.weight').shape[0],
        num_hidden_layers=num_blocks(sd, vision_prefix),
        num_attention_heads=vision_width // _HEAD_WIDTH,
        image_size=patch * grid,
        patch_size=patch,
        num_channels=num_channels,
        **shared)
    return dict(
        projection_dim=embed_dim,
        logit_scale_init_value=float(_get(sd, prefix, 'logit_scale')),
        text_config=text_config,
        vision_config=vision_config)


def _convert_block_key(rest: str, value: Tensor,
                       layer_prefix: str) -> dict[str, Tensor] | None:
    """One block entry (``rest`` = ``'{i}.{suffix}'``) -> HF entries, or None."""
    index, _, suffix = rest.partition('.')
    if not index.isdigit():
        return None
    hf_prefix = f'{layer_prefix}{index}.'
    if suffix in _BLOCK_RENAMES:
        return {hf_prefix + _BLOCK_RENAMES[suffix]: value}
    if suffix in ('attn.in_proj_weight', 'attn.in_proj_bias'):
        # [3W, W] / [3W]: q, k, v stacked along the rows, in that order.
        if value.shape[0] % 3:
            return None
        kind = 'weight' if suffix.endswith('weight') else 'bias'
        q, k, v = value.chunk(3, dim=0)  # 3 x [W, W] / 3 x [W]
        return {f'{hf_prefix}self_attn.{name}_proj.{kind}': part.contiguous()
                for name, part in zip('qkv', (q, k, v))}
    return None


def openai_to_hf(sd: Mapping[str, Tensor],
                 prefix: str = '') -> dict[str, Tensor]:
    """Rename OpenAI CLIP keys to ``transformers.CLIPModel`` state-dict keys.

    Splits each block's ``in_proj`` into q, k and v, and transposes the two
    projections ([W, D] -> [D, W]). Keys outside ``prefix`` and keys under it
    that are not CLIP's (e.g. CLIP4Clip's own modules) are left out.

    Raises:
        KeyError: a key that belongs to CLIP (``visual.*``,
            ``transformer.*``...) but has no Hugging Face counterpart.
    """
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name.split('.', 1)[0] not in CLIP_ROOTS:
            continue
        if name in _PLAIN_RENAMES:
            out[_PLAIN_RENAMES[name]] = value
            continue
        if name in _TRANSPOSED_RENAMES:
            out[_TRANSPOSED_RENAMES[name]] = value.t().contiguous()  # [D, W]
            continue
        converted = None
        for block_prefix, layer_prefix in _TOWERS.items():
            if name.startswith(block_prefix):
                converted = _convert_block_key(name[len(block_prefix):], value,
                                               layer_prefix)
                break
        if converted is None:
            raise KeyError(f'OpenAI CLIP key {key!r} has no counterpart in '
                           'transformers.CLIPModel')
        out.update(converted)
    return out


def clip_from_openai(sd: Mapping[str, Tensor],
                     prefix: str = '') -> CLIPModel:
    """Build a float32 ``CLIPModel`` holding an OpenAI CLIP state dict.

    The config comes from :func:`openai_clip_config`, the weights from
    :func:`openai_to_hf`, loaded strictly: any missing or unexpected key is
    an error (non-persistent buffers such as ``position_ids`` aside). The
    model is returned in eval mode, as ``from_pretrained`` does.
    """
    from transformers import CLIPConfig, CLIPModel

    model = CLIPModel(CLIPConfig(**openai_clip_config(sd, prefix)))
    model = model.to(torch.float32)
    weights = {k: v.float() if v.is_floating_point() else v
               for k, v in openai_to_hf(sd, prefix).items()}
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys
               if not k.endswith('position_ids')]
    unexpected = [k for k in result.unexpected_keys
                  if not k.endswith('position_ids')]
    if missing or unexpected:
        raise KeyError(f'OpenAI CLIP weights do not fit CLIPModel: missing '
                       f'{missing}, unexpected {unexpected}')
    return model.eval()
