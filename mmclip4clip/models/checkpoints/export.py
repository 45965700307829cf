"""Write a converted checkpoint as ``model.pth`` + a runnable ``config.py``."""
from __future__ import annotations

from pathlib import Path

import torch
from mmengine.config import Config

from mmclip4clip.utils.config import type_name
from mmclip4clip.utils.fileio import atomic_path, atomic_write

from .retriever import build_converted, convert_checkpoint, load_source
from .stored_config import mmaction2_adapter_heads

# Pipeline transforms whose arguments must follow the converted weights.
_SIZE_KEYS = {'CLIPResizeCrop': 'size', 'TokenizeCaptions': 'max_words',
              'SampleFramesByRate': 'max_frames'}


def _pipelines(cfg: Config):
    """Every dataset pipeline (list of transform dicts) of the dataloaders."""
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(name)
        if loader is None:
            continue
        pipeline = loader.get('dataset', {}).get('pipeline')
        if pipeline is not None:
            yield name, pipeline


def fit_data_config(cfg: Config, image_size: int, max_words: int,
                    max_frames: int) -> None:
    """Set the frame size, caption length and frame count of every pipeline
    (in place) to those the converted model takes."""
    values = {'CLIPResizeCrop': image_size, 'TokenizeCaptions': max_words,
              'SampleFramesByRate': max_frames}
    for name, pipeline in _pipelines(cfg):
        found = set()
        for transform in pipeline:
            kind = type_name(transform)
            if kind in values:
                transform[_SIZE_KEYS[kind]] = values[kind]
                found.add(kind)
        if found != set(values):
            raise ValueError(
                f'{name}.dataset.pipeline of {cfg.filename} lacks '
                f'{sorted(set(values) - found)}; cannot fit it to the '
                'converted model')


def export_converted(src: str, out_dir: str, fmt: str, base_config: str,
                     sim_header: str | None = None,
                     linear_patch: str | None = None, max_words: int = 32,
                     max_frames: int = 12, allow_pickle: bool = False,
                     num_heads: int | None = None) -> tuple[Path, Path]:
    """Convert ``src`` and write ``out_dir/model.pth`` and
    ``out_dir/config.py`` (``base_config``'s data, schedule and runtime with
    the converted model); returns both paths.

    The model config's shapes are read off the weights, and an mmaction2
    adapter's head count off the config stored in the checkpoint unless
    ``num_heads`` is given; the pipelines get the weights' image size and the
    given ``max_words`` / ``max_frames``.
    """
    source = load_source(src, fmt, allow_pickle=allow_pickle)
    if fmt == 'mmaction2':
        num_heads = mmaction2_adapter_heads(src, source, num_heads,
                                            allow_pickle=allow_pickle)
    state_dict, model_cfg = convert_checkpoint(source, fmt, sim_header,
                                               linear_patch, num_heads)
    head = model_cfg['head']
    rows = head.get('max_positions')
    extra = 1 if head['type'] == 'TightTransfHead' else 0
    if rows is not None and max_frames + extra > rows:
        raise ValueError(f'--max-frames {max_frames} does not fit the head\'s '
                         f'position table of {rows} rows')
    if head['type'] == 'MMAction2TransformerHead' and \
            max_frames != head['num_segs']:
        raise ValueError(f'the mmaction2 adapter was trained on '
                         f'{head["num_segs"]} frames; pass --max-frames '
                         f'{head["num_segs"]}')
    text_ctx = model_cfg['backbone']['config']['text_config'][
        'max_position_embeddings']
    if max_words > text_ctx:
        raise ValueError(f'--max-words {max_words} exceeds CLIP\'s context '
                         f'length {text_ctx}')
    model = build_converted(state_dict, model_cfg)

    cfg = Config.fromfile(base_config)
    cfg.model = model_cfg
    image_size = model_cfg['backbone']['config']['vision_config']['image_size']
    fit_data_config(cfg, image_size, max_words, max_frames)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, cfg_path = out / 'model.pth', out / 'config.py'
    meta = dict(source=str(src), format=fmt, model=repr(model_cfg['head']))
    with atomic_path(ckpt_path) as tmp:
        torch.save(dict(state_dict=model.state_dict(), meta=meta), tmp)
    # What Config.dump writes for a .py config, but whole or not at all.
    with atomic_write(cfg_path, 'w', encoding='utf-8') as f:
        f.write(cfg.pretty_text)
    return ckpt_path, cfg_path
