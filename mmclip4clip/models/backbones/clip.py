"""CLIP text and image towers from Hugging Face ``transformers``.

The features are those of CLIP4Clip (docs/models.md#encoders):

- text: ``ln_final(h) @ text_projection`` read at the end-of-text token;
- frames: every frame through the image tower on its own,
  ``ln_post(h_cls) @ visual.proj``, giving ``[B, T, D]``; with the "3d"
  linear patch the patch tokens come from a Conv3d over each video's frame
  stack instead (docs/models.md#encoders).

``freeze_layer_num`` follows the original rule
(docs/models.md#freezing-freeze_layer_num).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmclip4clip.models.activation_checkpoint import checkpointed
from mmclip4clip.models.one_query_attention import one_query_attention
from mmclip4clip.models.quick_gelu import quick_gelu_mlp
from mmclip4clip.registry import MODELS

if TYPE_CHECKING:  # transformers is imported where a CLIP is built
    from transformers import CLIPModel


def build_clip(pretrained: str | None = None,
               config: dict | None = None) -> CLIPModel:
    """Load CLIP from a Hugging Face directory or hub id, or build it randomly.

    Args:
        pretrained: a local directory in the Hugging Face format
            (``config.json`` + weights) or a hub id such as
            ``openai/clip-vit-base-patch32``; see :func:`load_clip`.
        config: keyword arguments of :class:`transformers.CLIPConfig`
            (``text_config``, ``vision_config``, ``projection_dim``...), for
            a randomly initialised model. Used only without ``pretrained``.
    """
    from transformers import CLIPConfig, CLIPModel

    if (pretrained is None) == (config is None):
        raise ValueError('CLIPBackbone needs exactly one of `pretrained` '
                         f'(got {pretrained!r}) and `config` (got {config!r})')
    if pretrained is None:
        return CLIPModel(CLIPConfig(**config))
    return load_clip(pretrained)


def check_clip_dir(directory: Path) -> None:
    """Raise naming the file at fault unless ``directory`` holds a
    ``config.json`` of a whole CLIP (``model_type`` 'clip': both towers and
    their projections), as ``CLIPModel.save_pretrained`` writes it.

    A one-tower directory (``CLIPTextModelWithProjection`` or
    ``CLIPVisionModelWithProjection`` saved alone) would otherwise be read
    as a CLIPConfig with default sizes and fail on shapes far from its
    cause, or not at all.
    """
    config_file = directory / 'config.json'
    if not config_file.is_file():
        raise FileNotFoundError(
            f'{directory} has no config.json: CLIPBackbone(pretrained=...) '
            'takes a Hugging Face CLIP directory (config.json, '
            'model.safetensors or pytorch_model.bin, tokenizer files)')
    try:
        model_type = json.loads(config_file.read_text()).get('model_type')
    except (ValueError, AttributeError) as err:
        raise ValueError(f'{config_file} is not a JSON object: {err}') from err
    if model_type != 'clip':
        tower = {'clip_text_model': ' (a text tower alone)',
                 'clip_vision_model': ' (an image tower alone)'}
        raise ValueError(
            f'{config_file} describes model_type {model_type!r}'
            f'{tower.get(model_type, "")}, not a CLIP model (\'clip\'): '
            'CLIPBackbone needs both towers and their projections, as '
            'CLIPModel.save_pretrained writes them')


def load_clip(pretrained: str) -> CLIPModel:
    """``CLIPModel.from_pretrained(pretrained)``, refusing weights that do
    not fill the model.

    A tensor missing from the weights, or of another shape than
    ``config.json`` gives it (e.g. another projection width), is an error
    naming the directory and the tensors: transformers would initialise it
    at random (a missing one) or report it in a table. One exception:
    ``logit_scale``, CLIP's temperature, which retrieval ranks do not depend
    on (every score of a query is scaled alike) and which some published
    retrieval checkpoints leave out; it is then set to CLIP's initial value,
    ``config.logit_scale_init_value`` (ln(1 / 0.07)), with a warning.
    """
    from transformers import CLIPModel

    if Path(pretrained).exists():
        check_clip_dir(Path(pretrained))
    try:
        clip, info = CLIPModel.from_pretrained(
            pretrained, output_loading_info=True,
            ignore_mismatched_sizes=True)
    except OSError as err:
        raise OSError(
            f'cannot load CLIP weights from {pretrained!r}: it is neither a '
            'Hugging Face CLIP directory nor a hub id that can be reached '
            f'({err})') from err
    mismatched = [f'{key} {tuple(got)} != {tuple(want)}'
                  for key, got, want in info['mismatched_keys']]
    if mismatched:
        raise ValueError(
            f'the weights in {pretrained} do not have the shapes its '
            f'config.json gives (weights != config): {", ".join(mismatched)}')
    missing = sorted(set(info['missing_keys']) - {'logit_scale'})
    if missing:
        raise ValueError(
            f'the weights in {pretrained} lack {len(missing)} tensor(s) of '
            f'its CLIP config, e.g. {", ".join(missing[:5])}: a CLIP '
            'directory holds both towers and their projections')
    if 'logit_scale' in info['missing_keys']:
        with torch.no_grad():
            clip.logit_scale.fill_(clip.config.logit_scale_init_value)
        warnings.warn(
            f'the weights in {pretrained} have no logit_scale; using CLIP\'s '
            f'initial value {clip.config.logit_scale_init_value} (retrieval '
            'ranks do not depend on it)', stacklevel=2)
    return clip


# The parts of transformers' CLIPModel that CLIPBackbone (and the heads'
# start from CLIP's text tower) read directly instead of calling its forward:
# private layout that a transformers release may rename. Checked at
# construction (:func:`check_clip_layout`), so a changed layout fails there,
# naming the attribute, and not deep inside a forward pass.
CLIP_MODEL_ATTRIBUTES = (
    'logit_scale', 'text_projection', 'visual_projection',
    'config.projection_dim', 'config.vision_config.image_size',
    'config.text_config.num_attention_heads',
    'text_model.embeddings', 'text_model.embeddings.position_embedding',
    'text_model.encoder.layers', 'text_model.final_layer_norm',
    'vision_model.embeddings', 'vision_model.embeddings.patch_embedding',
    'vision_model.embeddings.class_embedding',
    'vision_model.embeddings.position_embedding',
    'vision_model.embeddings.position_ids', 'vision_model.pre_layrnorm',
    'vision_model.encoder.layers', 'vision_model.post_layernorm')
CLIP_LAYER_ATTRIBUTES = (
    'layer_norm1', 'layer_norm2', 'self_attn', 'self_attn.q_proj',
    'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.out_proj',
    'self_attn.num_heads', 'self_attn.head_dim', 'self_attn.scale', 'mlp',
    'mlp.fc1', 'mlp.fc2', 'mlp.activation_fn')


def _has_path(obj, path: str) -> bool:
    for name in path.split('.'):
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def check_clip_layout(clip: nn.Module) -> None:
    """Raise RuntimeError naming every attribute of transformers'
    ``CLIPModel`` (and of its encoder layers) that CLIPBackbone reads and
    this transformers release lacks (see :data:`CLIP_MODEL_ATTRIBUTES`)."""
    missing = [path for path in CLIP_MODEL_ATTRIBUTES
               if not _has_path(clip, path)]
    for tower in ('text_model', 'vision_model'):
        layers = getattr(getattr(getattr(clip, tower, None), 'encoder', None),
                         'layers', None)
        if layers:
            missing += [f'{tower}.encoder.layers[0].{path}'
                        for path in CLIP_LAYER_ATTRIBUTES
                        if not _has_path(layers[0], path)]
    if missing:
        import transformers

        raise RuntimeError(
            f'transformers {transformers.__version__}: its CLIPModel lacks '
            f'{", ".join(missing)}, which mmclip4clip\'s CLIPBackbone reads '
            'directly (it runs the towers block by block); install a '
            'transformers release this package supports (setup.py: '
            "'transformers>=5,<6')")


# CLIP parameters that ``freeze_layer_num`` never freezes (Hugging Face
# names of OpenAI's ln_final, text_projection, logit_scale, visual.ln_post
# and visual.proj); the 3-D patch conv lives outside ``clip`` and is never
# frozen either.
ALWAYS_TRAINED = ('text_model.final_layer_norm.', 'text_projection.',
                  'logit_scale', 'vision_model.post_layernorm.',
                  'visual_projection.')
BLOCK_PREFIXES = ('text_model.encoder.layers.', 'vision_model.encoder.layers.')


def is_frozen(name: str, freeze_layer_num: int) -> bool:
    """Whether the CLIP parameter ``name`` is frozen by the original rule:
    everything except :data:`ALWAYS_TRAINED` and the blocks of index
    >= ``freeze_layer_num`` in both towers (so 0 still freezes the
    embeddings and ``ln_pre``)."""
    if name.startswith(ALWAYS_TRAINED):
        return False
    for prefix in BLOCK_PREFIXES:
        if name.startswith(prefix):
            return int(name[len(prefix):].split('.')[0]) < freeze_layer_num
    return True


def clip_mlp(mlp: nn.Module, x: Tensor) -> Tensor:
    """A Hugging Face ``CLIPMLP``; QuickGELU ones with one fused activation
    (:func:`quick_gelu_mlp`)."""
    from transformers.activations import QuickGELUActivation

    if isinstance(mlp.activation_fn, QuickGELUActivation):
        return quick_gelu_mlp(x, mlp.fc1, mlp.fc2)
    return mlp(x)


def clip_layer(layer: nn.Module, h: Tensor,
               attention_mask: Tensor | None) -> Tensor:
    """A Hugging Face ``CLIPEncoderLayer`` (pre-LN attention and MLP, each
    added to its input) with :func:`clip_mlp`."""
    x = h + layer.self_attn(layer.layer_norm1(h),
                            attention_mask=attention_mask)[0]
    return x + clip_mlp(layer.mlp, layer.layer_norm2(x))


def one_token_layer(layer: nn.Module, h: Tensor, position: Tensor,
                    key_bias: Tensor | None = None) -> Tensor:
    """One token's output of a Hugging Face ``CLIPEncoderLayer``: [N, S, W]
    input, [N] position of the token in each row and an optional additive
    key bias [N, S] -> [N, W].

    The towers' last block only has to produce the token that is read (CLS,
    end of text): the other tokens' queries, outputs and MLPs are skipped
    and their keys and values never projected (:func:`one_query_attention`).
    """
    attn = layer.self_attn
    n, _, width = h.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    rows = torch.arange(n, device=h.device)
    normed = layer.layer_norm1(h)  # [N, S, W]
    q = attn.q_proj(normed[rows, position]).view(n, heads, head_dim)
    out = one_query_attention(
        q, normed, attn.k_proj.weight.view(heads, head_dim, width),
        attn.k_proj.bias.view(heads, head_dim),
        attn.v_proj.weight.view(heads, head_dim, width),
        attn.v_proj.bias.view(heads, head_dim), attn.scale, key_bias)
    x = h[rows, position] + attn.out_proj(out.reshape(n, width))  # [N, W]
    return x + clip_mlp(layer.mlp, layer.layer_norm2(x))


class _ClipConfigTarget:
    """``CLIPBackbone.kwargs_targets``, ``{'config': CLIPConfig}``, built on
    first read so that defining the class does not import transformers."""

    def __get__(self, instance, owner) -> dict:
        from transformers import CLIPConfig

        return {'config': CLIPConfig}


@MODELS.register_module()
class CLIPBackbone(BaseModule):
    """CLIP's two towers, encoding captions and video frames.

    Args:
        pretrained: Hugging Face directory or hub id of CLIP weights.
        config: :class:`transformers.CLIPConfig` arguments for a randomly
            initialised CLIP (tests, the synthetic default).
        linear_patch: '2d' (CLIP's patch conv, frame by frame) or '3d' (a
            Conv3d with kernel (3, p, p) over each video's frames, started
            from the 2-D kernel so it first gives the '2d' output).
        freeze_layer_num: -1 trains all of CLIP; N >= 0 freezes CLIP except
            its output norms and projections, ``logit_scale`` and the blocks
            of index >= N in both towers
            (docs/models.md#freezing-freeze_layer_num).
        with_cp: activation checkpointing of every transformer block of
            both towers in training (see
            :mod:`mmclip4clip.models.activation_checkpoint`): autograd keeps
            each block's input and recomputes its inner activations in the
            backward pass; loss and gradients are unchanged. No effect in
            evaluation or under ``torch.no_grad()``. Hugging Face's
            ``activation_checkpointing_enable()`` does not apply here: the
            towers' blocks are run by :func:`clip_layer` and
            :func:`one_token_layer`, not by the layers' ``forward``.
    """

    # ``config`` is passed on as keyword arguments of CLIPConfig (read by the
    # --cfg-options checks, mmclip4clip.engine.cfg_options).
    kwargs_targets = _ClipConfigTarget()

    def __init__(self, pretrained: str | None = None,
                 config: dict | None = None, linear_patch: str = '2d',
                 freeze_layer_num: int = -1, with_cp: bool = False) -> None:
        super().__init__()
        if linear_patch not in ('2d', '3d'):
            raise ValueError(
                f"linear_patch must be '2d' or '3d', got {linear_patch!r}")
        self.clip = build_clip(pretrained, config)
        check_clip_layout(self.clip)
        self.linear_patch = linear_patch
        if linear_patch == '3d':
            self.conv2 = self.conv3d_from_patch_conv()
        self.freeze_layer_num = freeze_layer_num
        self._freeze()
        self.with_cp = with_cp

    def conv3d_from_patch_conv(self) -> nn.Conv3d:
        """Conv3d(3, W, (3, p, p)) whose middle temporal slice is CLIP's
        patch kernel and the others zero."""
        conv2d = self.clip.vision_model.embeddings.patch_embedding
        p = conv2d.kernel_size[0]
        conv3d = nn.Conv3d(conv2d.in_channels, conv2d.out_channels,
                           kernel_size=(3, p, p), stride=(1, p, p),
                           padding=(1, 0, 0), bias=False)
        with torch.no_grad():
            conv3d.weight.zero_()
            conv3d.weight[:, :, 1] = conv2d.weight
        return conv3d

    def _freeze(self) -> None:
        if self.freeze_layer_num < 0:
            return
        for name, param in self.clip.named_parameters():
            if is_frozen(name, self.freeze_layer_num):
                param.requires_grad_(False)

    def _block(self, fn, *args) -> Tensor:
        """``fn(*args)`` for one tower block, checkpointed with ``with_cp``
        in training."""
        return checkpointed(fn, *args, enabled=self.with_cp and self.training)

    @property
    def logit_scale(self) -> nn.Parameter:
        """CLIP's learned log-temperature, used by the loose heads."""
        return self.clip.logit_scale

    @property
    def embed_dim(self) -> int:
        return self.clip.config.projection_dim

    @property
    def image_size(self) -> int:
        return self.clip.config.vision_config.image_size

    def encode_text(self, input_ids: Tensor,
                    attention_mask: Tensor | None = None) -> Tensor:
        """[N, L] token ids -> [N, D] projected end-of-text features.

        The feature is read at ``argmax(ids)`` (CLIP's end-of-text token has
        the largest id), as the original code does, whatever
        ``eos_token_id`` the Hugging Face config holds. Padding after the
        batch's longest caption is cut first: the causal mask keeps every
        token from seeing later ones, so the features are unchanged and the
        cost follows the captions' length, not the context length.
        """
        if attention_mask is not None and input_ids.shape[1] > 1:
            length = int(attention_mask.sum(dim=1).max())
            keep = max(length, int(input_ids.argmax(dim=-1).max()) + 1)
            input_ids = input_ids[:, :keep]
            attention_mask = attention_mask[:, :keep]
        text = self.clip.text_model
        h = text.embeddings(input_ids=input_ids)  # [N, L, W]
        length = h.shape[1]
        # Causal mask only: padding follows the end token, so no token that
        # is read ever sees it.
        causal = torch.full((length, length), float('-inf'), dtype=h.dtype,
                            device=h.device).triu_(1)[None, None]
        layers = text.encoder.layers
        for layer in layers[:-1]:
            h = self._block(clip_layer, layer, h, causal)
        eot = input_ids.argmax(dim=-1)  # [N]
        keys = torch.arange(length, device=h.device)
        key_bias = torch.zeros(h.shape[0], length, dtype=h.dtype,
                               device=h.device).masked_fill_(
                                   keys[None] > eot[:, None], float('-inf'))
        feat = self._block(one_token_layer, layers[-1], h, eot,
                           key_bias)  # [N, W]
        return self.clip.text_projection(text.final_layer_norm(feat))

    def encode_images(self, images: Tensor) -> Tensor:
        """[N, 3, H, W] normalised images -> [N, D] projected CLS features."""
        vision = self.clip.vision_model
        return self._encode_vision_tokens(vision.embeddings(images))

    def encode_patch_tokens(self, tokens: Tensor) -> Tensor:
        """[N, P, W] patch tokens (patch conv output) -> [N, D] features:
        the rest of CLIP's image tower after the patch conv."""
        emb = self.clip.vision_model.embeddings
        cls = emb.class_embedding.expand(tokens.shape[0], 1, -1)
        h = torch.cat([cls, tokens], dim=1)  # [N, 1 + P, W]
        return self._encode_vision_tokens(
            h + emb.position_embedding(emb.position_ids))

    def _encode_vision_tokens(self, h: Tensor) -> Tensor:
        """[N, 1 + P, W] embedded tokens -> [N, D] projected CLS features;
        the last block computes the CLS token only."""
        vision = self.clip.vision_model
        h = vision.pre_layrnorm(h)
        layers = vision.encoder.layers
        for layer in layers[:-1]:
            h = self._block(clip_layer, layer, h, None)
        cls = self._block(one_token_layer, layers[-1], h,
                          h.new_zeros(h.shape[0], dtype=torch.long))
        return self.clip.visual_projection(vision.post_layernorm(cls))

    def patch_tokens_3d(self, frames: Tensor) -> Tensor:
        """[B, T, 3, H, W] -> [B, T, P, W] patch tokens of the 3-D conv; the
        temporal kernel of a frame also sees its neighbours, padded (zero)
        frames included, as in the original."""
        size = self.image_size
        if frames.shape[-2:] != (size, size):
            raise ValueError(f'frames of {tuple(frames.shape[-2:])} px, but '
                             f'the model takes {size}x{size}')
        x = self.conv2(frames.transpose(1, 2).to(self.conv2.weight.dtype))
        # [B, W, T, g, g] -> [B, T, g * g, W]
        return x.flatten(3).permute(0, 2, 3, 1)

    def encode_frames(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """[B, T, 3, H, W] frames + [B, T] mask -> [B, T, D] frame features.

        Only real frames go through the image tower; padded positions get
        zero features (every head ignores them, docs/models.md#frames).
        """
        b, t = frames.shape[:2]
        real = frame_mask.reshape(-1).bool()
        if not real.any():
            return frames.new_zeros(b, t, self.embed_dim)
        if self.linear_patch == '3d':
            tokens = self.patch_tokens_3d(frames).flatten(0, 1)[real]
            feats = self.encode_patch_tokens(tokens)  # [R, D]
        else:
            feats = self.encode_images(frames.flatten(0, 1)[real])  # [R, D]
        out = feats.new_zeros(b * t, feats.shape[-1])
        out[real] = feats
        return out.view(b, t, -1)
