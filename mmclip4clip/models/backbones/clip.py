"""CLIP text and image towers from Hugging Face ``transformers``.

The features are those of CLIP4Clip (spec section 1):

- text: ``ln_final(h) @ text_projection`` read at the end-of-text token;
- frames: every frame through the image tower on its own,
  ``ln_post(h_cls) @ visual.proj``, giving ``[B, T, D]``.
"""
from __future__ import annotations

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPModel

from mmclip4clip.registry import MODELS


def build_clip(pretrained: str | None = None,
               config: dict | None = None) -> CLIPModel:
    """Load CLIP from a Hugging Face directory or hub id, or build it randomly.

    Args:
        pretrained: a local directory in the Hugging Face format
            (``config.json`` + weights) or a hub id such as
            ``openai/clip-vit-base-patch32``.
        config: keyword arguments of :class:`transformers.CLIPConfig`
            (``text_config``, ``vision_config``, ``projection_dim``...), for
            a randomly initialised model. Used only without ``pretrained``.
    """
    if (pretrained is None) == (config is None):
        raise ValueError('CLIPBackbone needs exactly one of `pretrained` '
                         f'(got {pretrained!r}) and `config` (got {config!r})')
    if pretrained is None:
        return CLIPModel(CLIPConfig(**config))
    try:
        return CLIPModel.from_pretrained(pretrained)
    except OSError as err:
        raise OSError(
            f'cannot load CLIP weights from {pretrained!r}: it is neither a '
            'Hugging Face CLIP directory nor a hub id that can be reached '
            f'({err})') from err


@MODELS.register_module()
class CLIPBackbone(BaseModule):
    """CLIP's two towers, encoding captions and video frames.

    Args:
        pretrained: Hugging Face directory or hub id of CLIP weights.
        config: :class:`transformers.CLIPConfig` arguments for a randomly
            initialised CLIP (tests, the synthetic default).
    """

    def __init__(self, pretrained: str | None = None,
                 config: dict | None = None) -> None:
        super().__init__()
        self.clip = build_clip(pretrained, config)

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
        ``eos_token_id`` the Hugging Face config holds.
        """
        out = self.clip.text_model(input_ids=input_ids,
                                   attention_mask=attention_mask)
        hidden = out.last_hidden_state  # [N, L, W], after ln_final
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        eot = hidden[rows, input_ids.argmax(dim=-1)]  # [N, W]
        return self.clip.text_projection(eot)

    def encode_images(self, images: Tensor) -> Tensor:
        """[N, 3, H, W] normalised images -> [N, D] projected CLS features."""
        out = self.clip.vision_model(pixel_values=images)
        return self.clip.visual_projection(out.pooler_output)

    def encode_frames(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """[B, T, 3, H, W] frames + [B, T] mask -> [B, T, D] frame features.

        Only real frames go through the image tower; padded positions get
        zero features (every head ignores them, spec section 1).
        """
        b, t = frames.shape[:2]
        real = frame_mask.reshape(-1).bool()
        if not real.any():
            return frames.new_zeros(b, t, self.embed_dim)
        feats = self.encode_images(frames.flatten(0, 1)[real])  # [R, D]
        out = feats.new_zeros(b * t, feats.shape[-1])
        out[real] = feats
        return out.view(b, t, -1)
