"""CLIP's text tower read from either CLIP module layout.

seqTransf and tightTransf start their position table and cross blocks from
CLIP's text tower (docs/models.md#initialisation-from-clip). Two CLIP modules
hold that tower:

- Hugging Face's ``transformers.CLIPModel`` (our backbone):
  ``text_model.embeddings.position_embedding`` (an ``nn.Embedding``) and
  ``text_model.encoder.layers[i]`` with separate ``self_attn.{q,k,v}_proj``,
  ``out_proj``, ``layer_norm1``, ``mlp.fc1``, ``mlp.fc2``, ``layer_norm2``;
- OpenAI's ``clip.model.CLIP`` (the model inside mmaction2's
  ``CLIPSimilarity``): ``positional_embedding`` (a parameter) and
  ``transformer.resblocks[i]`` with ``attn`` (``nn.MultiheadAttention``:
  ``in_proj_weight``/``in_proj_bias`` stacking q, k, v, and ``out_proj``),
  ``ln_1``, ``mlp.c_fc``, ``mlp.c_proj``, ``ln_2``.

:func:`clip_text_tower` recognises the layout by these attributes and
returns the tower in one form: the position table and each block's tensors
under OpenAI's names, which are also the names of our cross blocks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

# Block tensors under OpenAI's names (and our cross blocks') -> the same
# tensor in a Hugging Face CLIPEncoderLayer; q, k, v are stacked apart.
_HF_BLOCK_NAMES = {
    'attn.out_proj.weight': 'self_attn.out_proj.weight',
    'attn.out_proj.bias': 'self_attn.out_proj.bias',
    'ln_1.weight': 'layer_norm1.weight',
    'ln_1.bias': 'layer_norm1.bias',
    'ln_2.weight': 'layer_norm2.weight',
    'ln_2.bias': 'layer_norm2.bias',
    'mlp.c_fc.weight': 'mlp.fc1.weight',
    'mlp.c_fc.bias': 'mlp.fc1.bias',
    'mlp.c_proj.weight': 'mlp.fc2.weight',
    'mlp.c_proj.bias': 'mlp.fc2.bias',
}
_OPENAI_BLOCK_NAMES = (*_HF_BLOCK_NAMES, 'attn.in_proj_weight',
                       'attn.in_proj_bias')


@dataclass
class ClipTextTower:
    """CLIP's text tower in the form the cross heads load from.

    Attributes:
        position_embedding: [L, W] positional rows (L = context length).
        blocks: per text block, its tensors under OpenAI's names
            (``attn.in_proj_weight`` [3W, W], ``ln_1.weight``...).
        num_heads: attention heads of the text blocks.
    """

    position_embedding: Tensor
    blocks: list[dict[str, Tensor]]
    num_heads: int

    @property
    def width(self) -> int:
        return self.position_embedding.shape[1]


def _is_hf_clip(clip: nn.Module) -> bool:
    text = getattr(clip, 'text_model', None)
    return (hasattr(getattr(text, 'embeddings', None), 'position_embedding')
            and hasattr(getattr(text, 'encoder', None), 'layers'))


def _is_openai_clip(clip: nn.Module) -> bool:
    return (isinstance(getattr(clip, 'positional_embedding', None), Tensor)
            and hasattr(getattr(clip, 'transformer', None), 'resblocks'))


def _hf_block(layer: nn.Module) -> dict[str, Tensor]:
    """A Hugging Face ``CLIPEncoderLayer`` under OpenAI's names."""
    out = {name: layer.get_parameter(hf_name)
           for name, hf_name in _HF_BLOCK_NAMES.items()}
    for kind in ('weight', 'bias'):
        out[f'attn.in_proj_{kind}'] = torch.cat([
            layer.get_parameter(f'self_attn.{p}_proj.{kind}') for p in 'qkv'])
    return out


def clip_text_tower(clip: nn.Module) -> ClipTextTower:
    """The text tower of a Hugging Face ``CLIPModel`` or of OpenAI's
    ``clip.model.CLIP`` (as inside mmaction2's model), in one form.

    Raises:
        TypeError: ``clip`` has neither layout's attributes (a silent random
            start of the head would otherwise follow).
    """
    if _is_hf_clip(clip):
        text = clip.text_model
        return ClipTextTower(
            position_embedding=text.embeddings.position_embedding.weight,
            blocks=[_hf_block(layer) for layer in text.encoder.layers],
            num_heads=text.config.num_attention_heads)
    if _is_openai_clip(clip):
        blocks = list(clip.transformer.resblocks)
        return ClipTextTower(
            position_embedding=clip.positional_embedding,
            blocks=[{name: block.get_parameter(name)
                     for name in _OPENAI_BLOCK_NAMES} for block in blocks],
            num_heads=blocks[0].attn.num_heads if blocks else 0)
    raise TypeError(
        f'init_from_clip: {type(clip).__module__}.{type(clip).__qualname__} '
        'is not a CLIP model this head can start from; expected a Hugging '
        'Face transformers.CLIPModel (text_model.embeddings.'
        'position_embedding, text_model.encoder.layers) or an OpenAI/'
        'mmaction2 clip.model.CLIP (positional_embedding, '
        'transformer.resblocks)')
