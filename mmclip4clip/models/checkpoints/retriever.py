"""Checkpoints users bring, as mmclip4clip retriever weights and model config.

Three source layouts (docs/models.md#checkpoint-formats), all sharing OpenAI's
CLIP key names:

- ``openai``: an OpenAI CLIP archive (``ViT-B-32.pt``); CLIP only, the head
  is chosen by the caller and starts from CLIP as in training;
- ``clip4clip``: the original code's ``pytorch_model.bin.<epoch>``: CLIP
  under ``clip.`` (``clip.visual.conv2.weight`` for the 3-D patch), and the
  head's own keys (``frame_position_embeddings``, ``transformerClip.*``,
  ``lstm_visual.*``, ``cross.*`` + ``similarity_dense.*``);
- ``mmaction2``: an mmengine checkpoint of mmaction2's CLIP4Clip
  (``state_dict`` with ``clip.*`` and ``adapter.*``), converted to the
  mmaction2 adapter heads so its arithmetic, and scores, are kept.

:func:`convert_checkpoint` returns our state dict and the ``model`` config
whose shapes are read off the weights, as the original code does.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from mmclip4clip.engine.checkpoint_io import (
    UnsafeCheckpointError,
    load_checkpoint_file,
)

from .openai_clip import (
    CLIP_ROOTS,
    load_openai_state_dict,
    num_blocks,
    openai_clip_config,
    openai_to_hf,
)

FORMATS = ('openai', 'clip4clip', 'mmaction2')
SIM_HEADERS = ('meanP', 'seqLSTM', 'seqTransf', 'tightTransf')

# Original CLIP4Clip head keys -> ours (prefix renames, applied in order).
_CLIP4CLIP_HEAD_RENAMES = {
    'seqTransf': [('frame_position_embeddings.', 'head.frame_position_embeddings.'),
                  ('transformerClip.', 'head.transformer.')],
    'seqLSTM': [('lstm_visual.', 'head.lstm.')],
    'tightTransf': [
        ('cross.embeddings.position_embeddings.',
         'head.position_embeddings.'),
        ('cross.transformer.', 'head.transformer.'),
        ('cross.pooler.ln_pool.', 'head.pooler_ln.'),
        ('cross.pooler.dense.', 'head.pooler_dense.'),
        ('similarity_dense.', 'head.classifier.'),
    ],
    'meanP': [],
}
# Keys the original creates but never uses for a head (e.g. the frame table
# of seqLSTM), dropped without complaint.
_UNUSED = {'seqLSTM': ('frame_position_embeddings.', ), 'meanP': (),
           'seqTransf': (), 'tightTransf': ()}


def load_source(path: str, fmt: str, allow_pickle: bool = False) -> dict:
    """The flat state dict of a source checkpoint.

    ``clip4clip`` and ``mmaction2`` files are read with
    :func:`~mmclip4clip.engine.checkpoint_io.load_checkpoint_file` (torch's
    safe loader; empty, truncated and non-torch files are named as such); a
    file holding other pickled objects (mmaction2's own training
    checkpoints hold mmengine's message hub) is refused unless
    ``allow_pickle`` says the file is trusted, because unpickling it can run
    code. ``openai`` archives are read as data, without running their
    TorchScript code, unless ``allow_pickle`` (see
    :func:`load_openai_state_dict`).
    """
    if fmt not in FORMATS:
        raise ValueError(f'unknown format {fmt!r}; expected one of {FORMATS}')
    if fmt == 'openai':
        return load_openai_state_dict(path, allow_pickle=allow_pickle)
    try:
        ckpt = load_checkpoint_file(path, map_location='cpu',
                                    allow_pickle=allow_pickle)
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(
            f'{err} If you trust the file, convert with --allow-pickle') \
            from err
    if isinstance(ckpt, Mapping) and 'state_dict' in ckpt:
        ckpt = ckpt['state_dict']
    if not isinstance(ckpt, Mapping) or not all(
            isinstance(v, Tensor) for v in ckpt.values()):
        raise ValueError(f'{path} is not a state dict of tensors')
    sd = {k: v.float() if v.is_floating_point() else v
          for k, v in ckpt.items()}
    # DataParallel / DDP saves prefix every key with ``module.``.
    if sd and all(k.startswith('module.') for k in sd):
        sd = {k[len('module.'):]: v for k, v in sd.items()}
    return sd


def infer_sim_header(sd: Mapping[str, Tensor]) -> str:
    """The original CLIP4Clip head a state dict was trained with."""
    if any(k.startswith(('cross.', 'similarity_dense.')) for k in sd):
        return 'tightTransf'
    if any(k.startswith('transformerClip.') for k in sd):
        return 'seqTransf'
    if any(k.startswith('lstm_visual.') for k in sd):
        return 'seqLSTM'
    return 'meanP'


def _block_heads(width: int) -> int:
    return max(width // 64, 1)


def head_config(sim_header: str, sd: Mapping[str, Tensor], embed_dim: int,
                text_context: int) -> dict:
    """Our head config for ``sim_header``, shapes read off ``sd`` (already
    in our naming) where the head has weights, else the paper's defaults."""
    if sim_header == 'meanP':
        return dict(type='MeanPHead')
    if sim_header == 'seqLSTM':
        return dict(type='SeqLSTMHead', embed_dim=embed_dim)
    table = ('head.frame_position_embeddings.weight' if sim_header == 'seqTransf'
             else 'head.position_embeddings.weight')
    rows = sd[table].shape[0] if table in sd else text_context
    layers = num_blocks(sd, 'head.transformer.resblocks.',
                        required=False) or 4
    cfg = dict(embed_dim=embed_dim, num_layers=layers,
               num_heads=_block_heads(embed_dim), max_positions=rows)
    if sim_header == 'seqTransf':
        return dict(type='SeqTransfHead', **cfg)
    if sim_header == 'tightTransf':
        return dict(type='TightTransfHead', **cfg)
    raise ValueError(f'unknown sim_header {sim_header!r}; expected one of '
                     f'{SIM_HEADERS}')


def _clip_part(sd: Mapping[str, Tensor], prefix: str,
               linear_patch: str | None) -> tuple[dict, dict, str]:
    """CLIP weights in our naming, the CLIP config and the linear patch."""
    conv2 = f'{prefix}visual.conv2.weight'
    has_3d = conv2 in sd
    # The 3-D patch conv is CLIP4Clip's, not CLIP's: openai_to_hf refuses it.
    clip_sd = {k: v for k, v in sd.items() if k != conv2}
    stray = sorted(k for k in clip_sd if k.startswith(prefix)
                   and k[len(prefix):].split('.', 1)[0] not in CLIP_ROOTS)
    if stray:
        raise KeyError(f'keys of no CLIP module: {stray[:10]}')
    clip_cfg = openai_clip_config(clip_sd, prefix=prefix)
    ours = {f'backbone.clip.{k}': v
            for k, v in openai_to_hf(clip_sd, prefix=prefix).items()}
    patch = linear_patch or ('3d' if has_3d else '2d')
    if patch == '3d' and has_3d:
        ours['backbone.conv2.weight'] = sd[conv2]
    elif patch == '2d' and has_3d:
        raise ValueError(f'{conv2} is in the checkpoint (a "3d" model); '
                         'convert with --linear-patch 3d or leave it unset')
    return ours, clip_cfg, patch


def _rename(sd: Mapping[str, Tensor], renames: list[tuple[str, str]],
            skip: tuple[str, ...]) -> tuple[dict, list[str]]:
    """Apply prefix renames; returns (renamed, unknown keys)."""
    out, unknown = {}, []
    for key, value in sd.items():
        if key.startswith(skip):
            continue
        for old, new in renames:
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            unknown.append(key)
    return out, unknown


def convert_checkpoint(sd: Mapping[str, Tensor], fmt: str,
                       sim_header: str | None = None,
                       linear_patch: str | None = None,
                       num_heads: int | None = None) -> tuple[dict, dict]:
    """A source state dict -> (our state dict, our ``model`` config).

    Args:
        sd: the flat source state dict (:func:`load_source`).
        fmt: 'openai', 'clip4clip' or 'mmaction2'.
        sim_header: the head; for ``clip4clip`` it is read off the keys and
            a different request is an error; ``openai`` defaults to meanP;
            ``mmaction2`` takes its adapter from the keys.
        linear_patch: '2d' or '3d'; default: '3d' when the weights hold the
            3-D patch conv. For '3d' without it, the conv starts from the
            2-D kernel (docs/models.md#linear-patch).
        num_heads: attention heads of an ``mmaction2`` TransformerAdapter,
            which its weights do not fix (see
            :func:`~.stored_config.mmaction2_adapter_heads`); required for
            one, refused for every other source.

    The returned state dict may lack weights the model derives from CLIP at
    construction (3-D patch conv, head started from CLIP's text tower):
    :func:`build_converted` fills those in.
    """
    if fmt not in FORMATS:
        raise ValueError(f'unknown format {fmt!r}; expected one of {FORMATS}')
    if num_heads is not None and fmt != 'mmaction2':
        raise ValueError(f'num_heads (--num-heads) applies to mmaction2\'s '
                         f'TransformerAdapter only; {fmt} heads use one head '
                         'per 64 channels, as the original code does')
    prefix = '' if fmt == 'openai' else 'clip.'
    ours, clip_cfg, patch = _clip_part(sd, prefix, linear_patch)
    rest = {k: v for k, v in sd.items() if not k.startswith(prefix)} \
        if prefix else {}
    embed_dim = clip_cfg['projection_dim']
    context = clip_cfg['text_config']['max_position_embeddings']

    if fmt == 'openai':
        head_sd: dict = {}
        header = sim_header or 'meanP'
        head = head_config(header, head_sd, embed_dim, context)
    elif fmt == 'clip4clip':
        found = infer_sim_header(rest)
        if sim_header is not None and sim_header != found:
            raise ValueError(
                f'--sim-header {sim_header} was asked for, but the checkpoint '
                f'holds the weights of a {found} head')
        head_sd, unknown = _rename(rest, _CLIP4CLIP_HEAD_RENAMES[found],
                                   _UNUSED[found])
        if unknown:
            raise KeyError(f'keys of no {found} CLIP4Clip module: '
                           f'{sorted(unknown)[:10]}')
        head = head_config(found, head_sd, embed_dim, context)
    else:  # mmaction2
        head_sd, head = _mmaction2_head(rest, sim_header, num_heads)

    model = dict(
        type='CLIP4Clip',
        backbone=dict(type='CLIPBackbone', config=clip_cfg,
                      linear_patch=patch),
        head=head)
    return {**ours, **head_sd}, model


def _mmaction2_head(rest: Mapping[str, Tensor], sim_header: str | None,
                    num_heads: int | None) -> tuple[dict, dict]:
    unknown = [k for k in rest if not k.startswith('adapter.')]
    if unknown:
        raise KeyError(f'keys of no mmaction2 CLIP4Clip module: '
                       f'{sorted(unknown)[:10]}')
    if sim_header is not None:
        raise ValueError('an mmaction2 checkpoint keeps its own adapter; '
                         'do not pass --sim-header')
    if 'adapter.positional_embedding' not in rest:
        if num_heads is not None:
            raise ValueError('num_heads is given, but the checkpoint has no '
                             'TransformerAdapter')
        return {}, dict(type='MMAction2MeanHead')
    if num_heads is None:
        raise ValueError('the TransformerAdapter\'s num_heads is not in its '
                         'weights: read it from the checkpoint\'s stored '
                         'config with mmaction2_adapter_heads or pass it')
    table = rest['adapter.positional_embedding']
    head_sd, unknown = _rename(
        rest, [('adapter.positional_embedding', 'head.positional_embedding'),
               ('adapter.transformer.', 'head.transformer.')], ())
    if unknown:
        raise KeyError(f'unexpected adapter keys: {sorted(unknown)[:10]}')
    width = table.shape[1]
    return head_sd, dict(
        type='MMAction2TransformerHead', num_segs=table.shape[0],
        embed_dim=width,
        num_layers=num_blocks(head_sd, 'head.transformer.resblocks.',
                              required=False),
        num_heads=num_heads)


def build_converted(state_dict: Mapping[str, Tensor], model_cfg: dict):
    """The retriever of ``model_cfg`` holding ``state_dict``.

    Weights the source lacks are derived as in training: the 3-D patch conv
    from the 2-D kernel, a head's position table and blocks from CLIP's text
    tower. Any other missing or unexpected key is an error.
    """
    from mmengine.registry import DefaultScope

    from mmclip4clip.registry import MODELS

    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        model = MODELS.build(model_cfg)
    result = model.load_state_dict(dict(state_dict), strict=False)
    missing = set(result.missing_keys)
    if result.unexpected_keys:
        raise KeyError(f'converted keys the model does not have: '
                       f'{sorted(result.unexpected_keys)[:10]}')
    if 'backbone.conv2.weight' in missing:
        model.backbone.conv2 = model.backbone.conv3d_from_patch_conv()
        missing.discard('backbone.conv2.weight')
    head_missing = {k for k in missing if k.startswith('head.')}
    if head_missing:
        if any(k.startswith('head.') for k in state_dict):
            raise KeyError(f'the checkpoint has only part of the head: '
                           f'{sorted(head_missing)[:10]} missing')
        # A new head: started from CLIP where the original does so (seqTransf,
        # tightTransf); seqLSTM keeps its own init.
        if hasattr(model.head, 'init_from_clip'):
            model.head.init_from_clip(model.backbone.clip)
        missing -= head_missing
    if missing:
        raise KeyError(f'weights missing from the checkpoint: '
                       f'{sorted(missing)[:10]}')
    return model.eval()
