"""OpenAI CLIP written out in plain torch, on OpenAI's own state-dict layout.

A slow, explicit reference for the checkpoint converter: it reads the
OpenAI keys directly (no ``transformers``), so a renaming, splitting or
transposing mistake in the converter shows up as a feature mismatch. Also
random OpenAI-layout weights and a TorchScript archive stand-in, since the
tests may not download the real ``ViT-B-32.pt``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEAD_WIDTH = 64  # OpenAI: heads = width // 64 in both towers
LN_EPS = 1e-5
METADATA_KEYS = ('input_resolution', 'context_length', 'vocab_size')


def _layer_norm(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f'{name}.weight'],
                        sd[f'{name}.bias'], eps=LN_EPS)


def _linear(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    """``x @ W^T + b`` with ``W`` = ``sd[name.weight]`` ([out, in])."""
    return x @ sd[f'{name}.weight'].t() + sd[f'{name}.bias']


def _attention(x: Tensor, sd: dict[str, Tensor], name: str,
               causal: bool) -> Tensor:
    """Multi-head self-attention of ``nn.MultiheadAttention`` layout.

    ``x``: [N, L, W]. ``in_proj_weight`` [3W, W] stacks q, k, v by rows.
    """
    n, length, width = x.shape
    heads = width // HEAD_WIDTH
    head_dim = width // heads
    qkv = x @ sd[f'{name}.in_proj_weight'].t() + sd[f'{name}.in_proj_bias']
    q, k, v = qkv.split(width, dim=-1)  # 3 x [N, L, W]

    def split_heads(t: Tensor) -> Tensor:  # [N, L, W] -> [N, H, L, d]
        return t.reshape(n, length, heads, head_dim).transpose(1, 2)

    q, k, v = split_heads(q), split_heads(k), split_heads(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)  # [N, H, L, L]
    if causal:
        future = torch.ones(length, length, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float('-inf'))
    out = scores.softmax(dim=-1) @ v  # [N, H, L, d]
    out = out.transpose(1, 2).reshape(n, length, width)  # [N, L, W]
    return _linear(out, sd, f'{name}.out_proj')


def _blocks(x: Tensor, sd: dict[str, Tensor], prefix: str,
            causal: bool) -> Tensor:
    """OpenAI's pre-LN residual blocks ``{prefix}{i}.*`` with QuickGELU."""
    i = 0
    while f'{prefix}{i}.ln_1.weight' in sd:
        block = f'{prefix}{i}'
        x = x + _attention(_layer_norm(x, sd, f'{block}.ln_1'), sd,
                           f'{block}.attn', causal)
        h = _linear(_layer_norm(x, sd, f'{block}.ln_2'), sd,
                    f'{block}.mlp.c_fc')
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        x = x + _linear(h, sd, f'{block}.mlp.c_proj')
        i += 1
    assert i > 0, f'no blocks {prefix}*'
    return x


@torch.no_grad()
def encode_text(sd: dict[str, Tensor], ids: Tensor) -> Tensor:
    """[N, L] token ids -> [N, D] features, read at ``argmax(ids)``."""
    length = ids.shape[1]
    x = sd['token_embedding.weight'][ids] + sd['positional_embedding'][:length]
    x = _blocks(x, sd, 'transformer.resblocks.', causal=True)  # [N, L, W]
    x = _layer_norm(x, sd, 'ln_final')
    end = x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)]  # [N, W]
    return end @ sd['text_projection']  # [N, D]


@torch.no_grad()
def encode_image(sd: dict[str, Tensor], images: Tensor) -> Tensor:
    """[N, 3, S, S] images -> [N, D] features of the class token."""
    conv = sd['visual.conv1.weight']  # [W, 3, P, P]
    x = F.conv2d(images, conv, stride=conv.shape[-1])  # [N, W, G, G]
    x = x.flatten(2).transpose(1, 2)  # [N, G*G, W]
    cls = sd['visual.class_embedding'].expand(x.shape[0], 1, -1)  # [N, 1, W]
    x = torch.cat([cls, x], dim=1) + sd['visual.positional_embedding']
    x = _layer_norm(x, sd, 'visual.ln_pre')
    x = _blocks(x, sd, 'visual.transformer.resblocks.', causal=False)
    cls = _layer_norm(x[:, 0], sd, 'visual.ln_post')  # [N, W]
    return cls @ sd['visual.proj']  # [N, D]


def _block_weights(gen: torch.Generator, prefix: str, width: int,
                   layers: int) -> dict[str, Tensor]:
    """Random weights of ``layers`` OpenAI residual blocks of ``width``."""

    def randn(*shape: int, std: float = 0.02, mean: float = 0.0) -> Tensor:
        return torch.randn(*shape, generator=gen) * std + mean

    sd: dict[str, Tensor] = {}
    for i in range(layers):
        b = f'{prefix}{i}.'
        sd[b + 'attn.in_proj_weight'] = randn(3 * width, width, std=0.15)
        sd[b + 'attn.in_proj_bias'] = randn(3 * width)
        sd[b + 'attn.out_proj.weight'] = randn(width, width, std=0.1)
        sd[b + 'attn.out_proj.bias'] = randn(width)
        sd[b + 'ln_1.weight'] = randn(width, std=0.1, mean=1.0)
        sd[b + 'ln_1.bias'] = randn(width)
        sd[b + 'mlp.c_fc.weight'] = randn(4 * width, width, std=0.05)
        sd[b + 'mlp.c_fc.bias'] = randn(4 * width)
        sd[b + 'mlp.c_proj.weight'] = randn(width, 4 * width, std=0.02)
        sd[b + 'mlp.c_proj.bias'] = randn(width)
        sd[b + 'ln_2.weight'] = randn(width, std=0.1, mean=1.0)
        sd[b + 'ln_2.bias'] = randn(width)
    return sd


def make_openai_state_dict(width: int = 128, layers: int = 2,
                           vision_width: int = 128, vision_layers: int = 2,
                           patch: int = 4, image_size: int = 16,
                           context_length: int = 16, vocab: int = 64,
                           embed_dim: int = 32,
                           seed: int = 0) -> dict[str, Tensor]:
    """Random float32 CLIP weights with OpenAI's exact key names and shapes.

    Scales are chosen so that features stay far from degenerate: attention
    is peaked enough that a q/k mix-up changes the output, LN weights are
    near 1, embeddings have unit scale.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float = 0.02, mean: float = 0.0) -> Tensor:
        return torch.randn(*shape, generator=gen) * std + mean

    grid = image_size // patch
    assert grid * patch == image_size
    sd: dict[str, Tensor] = {
        'positional_embedding': randn(context_length, width, std=0.5),
        'text_projection': randn(width, embed_dim, std=width ** -0.5),
        'logit_scale': torch.tensor(math.log(1 / 0.07)),
        'visual.class_embedding': randn(vision_width, std=0.2),
        'visual.positional_embedding': randn(grid * grid + 1, vision_width,
                                             std=0.1),
        'visual.proj': randn(vision_width, embed_dim, std=vision_width ** -0.5),
        'visual.conv1.weight': randn(vision_width, 3, patch, patch, std=0.1),
        'visual.ln_pre.weight': randn(vision_width, std=0.1, mean=1.0),
        'visual.ln_pre.bias': randn(vision_width),
        'visual.ln_post.weight': randn(vision_width, std=0.1, mean=1.0),
        'visual.ln_post.bias': randn(vision_width),
        'token_embedding.weight': randn(vocab, width, std=1.0),
        'ln_final.weight': randn(width, std=0.1, mean=1.0),
        'ln_final.bias': randn(width),
    }
    # Module order of OpenAI's CLIP: visual blocks, then text blocks.
    sd.update(_block_weights(gen, 'visual.transformer.resblocks.',
                             vision_width, vision_layers))
    sd.update(_block_weights(gen, 'transformer.resblocks.', width, layers))
    return sd


class _Identity(nn.Module):
    """A container with a trivial ``forward`` so that it can be scripted."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class _Mlp(_Identity):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)


class _Block(_Identity):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, width // HEAD_WIDTH)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = _Mlp(width)
        self.ln_2 = nn.LayerNorm(width)


class _Transformer(_Identity):
    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[_Block(width) for _ in range(layers)])


class _LayerNormThatTouches(nn.LayerNorm):
    """A LayerNorm whose TorchScript ``__setstate__`` creates ``marker``.

    ``torch.jit.load`` runs ``__setstate__`` while loading, so the file
    appears exactly when a loader executes the archive's code. The result
    of ``torch.from_file`` is used so the compiler cannot drop the call.
    """

    def __init__(self, width: int, marker: str) -> None:
        super().__init__(width)
        self.marker = marker

    @torch.jit.export
    def __getstate__(self) -> tuple[Tensor, Tensor, bool, str]:
        return self.weight, self.bias, self.training, self.marker

    @torch.jit.export
    def __setstate__(self, state: tuple[Tensor, Tensor, bool, str]) -> None:
        touched = torch.from_file(state[3], True, 1, dtype=torch.uint8)
        self.weight = state[0]
        self.bias = state[1]
        self.training = state[2] and touched.numel() == 1
        self.marker = state[3]


def _count_blocks(sd: dict[str, Tensor], prefix: str) -> int:
    i = 0
    while f'{prefix}{i}.ln_1.weight' in sd:
        i += 1
    return i


def save_openai_torchscript(sd: dict[str, Tensor], path: str,
                            with_metadata: bool = True,
                            load_marker: str | None = None) -> None:
    """Write a TorchScript archive whose ``state_dict()`` is ``sd``.

    A module tree with OpenAI's attribute names (blocks built on
    ``nn.MultiheadAttention``, so ``in_proj_weight`` and ``out_proj.*``
    appear as in the real archives) holds ``sd``'s tensors with their
    dtypes. With ``with_metadata`` it also holds the archives' non-weight
    buffers ``input_resolution``, ``context_length`` and ``vocab_size``.
    With ``load_marker``, ``ln_final`` carries a ``__setstate__`` that
    creates that file when the archive is loaded (code run at load time).
    """
    width = sd['ln_final.weight'].shape[0]
    vision_width = sd['visual.conv1.weight'].shape[0]
    root = _Identity()
    root.visual = _Identity()
    root.visual.conv1 = nn.Conv2d(3, vision_width, 1, bias=False)
    root.visual.ln_pre = nn.LayerNorm(vision_width)
    root.visual.transformer = _Transformer(
        vision_width, _count_blocks(sd, 'visual.transformer.resblocks.'))
    root.visual.ln_post = nn.LayerNorm(vision_width)
    root.transformer = _Transformer(
        width, _count_blocks(sd, 'transformer.resblocks.'))
    root.token_embedding = nn.Embedding(1, width)
    root.ln_final = (nn.LayerNorm(width) if load_marker is None else
                     _LayerNormThatTouches(width, load_marker))
    for name in ('positional_embedding', 'text_projection', 'logit_scale',
                 'visual.class_embedding', 'visual.positional_embedding',
                 'visual.proj'):
        owner, _, leaf = name.rpartition('.')
        root.get_submodule(owner).register_parameter(
            leaf, nn.Parameter(torch.empty(0)))
    # Replace every tensor by the given one (shape and dtype included).
    params = dict(root.named_parameters())
    assert set(params) == set(sd), set(params) ^ set(sd)
    for name, value in sd.items():
        params[name].data = value.detach().clone()
    if with_metadata:
        size = sd['visual.conv1.weight'].shape[-1] * round(
            math.sqrt(sd['visual.positional_embedding'].shape[0] - 1))
        root.register_buffer('input_resolution', torch.tensor(size))
        root.register_buffer('context_length',
                             torch.tensor(sd['positional_embedding'].shape[0]))
        root.register_buffer('vocab_size',
                             torch.tensor(sd['token_embedding.weight'].shape[0]))
    torch.jit.script(root).save(path)
