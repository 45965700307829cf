"""Embed video files and free text with a loose-head CLIP4Clip model.

The videos go through the config's test pipeline without its caption steps,
so a file is decoded, sampled and resized exactly as in evaluation; the
model's data preprocessor then normalises the frames.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from mmcv.transforms import Compose
from mmengine.config import Config
from mmengine.registry import DefaultScope
from torch.utils.data import DataLoader, Dataset

from mmclip4clip.datasets.transforms import tokenize
from mmclip4clip.datasets.transforms.formatting import pack_frames
from mmclip4clip.datasets.transforms.text import load_tokenizer
from mmclip4clip.registry import TRANSFORMS
from mmclip4clip.utils.config import of_type, type_name

# Pipeline steps that need captions or pack them; replaced by pack_frames.
_CAPTION_STEPS = ('TokenizeCaptions', 'PackVideoTextInputs')
# How many names an error about many videos or texts lists.
_MAX_NAMED = 5


class QueryWarning(UserWarning):
    """A search query the model reads only in part: unknown words, or words
    past the text length."""


def _name_some(names: Sequence[str]) -> str:
    shown = ', '.join(names[:_MAX_NAMED])
    more = len(names) - _MAX_NAMED
    return shown + (f' (and {more} more)' if more > 0 else '')


def check_finite_rows(embeddings: np.ndarray, names: Sequence[str],
                      what: str) -> None:
    """Raise ValueError naming the rows of ``embeddings`` [N, D] that hold a
    NaN or inf: such a row would rank at random instead of failing."""
    bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
    if len(bad):
        raise ValueError(
            f'{len(bad)} {what} have embeddings that are not finite (NaN or '
            f'inf): {_name_some([str(names[i]) for i in bad])}; the model\'s '
            'weights (checkpoint) are probably not finite')


def _test_pipeline(cfg: Config) -> list[dict]:
    """The transforms of ``cfg.test_dataloader.dataset``."""
    return list(cfg.test_dataloader.dataset.pipeline)


def video_pipeline_cfg(cfg: Config) -> list[dict]:
    """The test pipeline without its caption steps (decode, sample,
    resize)."""
    return [dict(step) for step in _test_pipeline(cfg)
            if type_name(step) not in _CAPTION_STEPS]


def text_settings(cfg: Config) -> tuple[str, int]:
    """``(tokenizer, max_words)`` of the test pipeline's TokenizeCaptions."""
    for step in of_type(_test_pipeline(cfg), 'TokenizeCaptions'):
        return step['tokenizer'], step.get('max_words', 32)
    raise ValueError('the test pipeline has no TokenizeCaptions step')


def _check_loose(model: torch.nn.Module) -> None:
    if not model.embeds_videos:
        raise ValueError(
            'the tight head (tightTransf) scores (text, video) pairs and has '
            'no per-video embedding to index; use a loose head (meanP, '
            'seqLSTM, seqTransf)')


class VideoFileDataset(Dataset):
    """Decodes a list of video files; a file that fails yields its error
    instead of raising, so one broken file never stops a run."""

    def __init__(self, paths: Sequence[str | Path],
                 pipeline: list[dict]) -> None:
        self.paths = [str(p) for p in paths]
        with DefaultScope.overwrite_default_scope('mmclip4clip'):
            self.pipeline = Compose(
                [TRANSFORMS.build(step) for step in pipeline])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        sample = dict(index=index, imgs=None, frame_mask=None, duration=None,
                      error=None)
        try:
            results = self.pipeline(dict(filename=self.paths[index],
                                         start_index=0, modality='RGB'))
            sample['imgs'], sample['frame_mask'] = pack_frames(results)
            sample['duration'] = float(results['total_frames'] /
                                       results['avg_fps'])
        except Exception as err:  # noqa: BLE001  (reported per file)
            message = ' '.join(str(err).split())  # one line for the summary
            sample['error'] = f'{type(err).__name__}: {message}'
        return sample


def collate_as_list(batch: list[dict]) -> list[dict]:
    """Keep a batch as the list of samples (stacked after dropping the
    failed files)."""
    return batch


@torch.no_grad()
def encode_videos(
    model: torch.nn.Module,
    cfg: Config,
    paths: Sequence[str | Path],
    batch_size: int = 8,
    num_workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """Embed video files with a loose-head model.

    Returns ``(embeddings, info)``: ``info`` has one dict per path, in order,
    with ``path``, ``duration`` (seconds) and ``error`` (None, or why the file
    was skipped); ``embeddings`` is float32 [K, D] unit vectors for the K
    files whose ``error`` is None, in the same order. ``progress(done,
    total)`` is called after each batch. Workers decode in parallel.
    """
    _check_loose(model)
    dataset = VideoFileDataset(paths, video_pipeline_cfg(cfg))
    loader = DataLoader(dataset, batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate_as_list)
    info: list[dict] = [None] * len(dataset)  # type: ignore[list-item]
    chunks: list[np.ndarray] = []
    done = 0
    for batch in loader:
        good = []
        for sample in batch:
            info[sample['index']] = dict(path=dataset.paths[sample['index']],
                                         duration=sample['duration'],
                                         error=sample['error'])
            if sample['error'] is None:
                good.append(sample)
        if good:
            data = model.data_preprocessor(dict(inputs=dict(
                imgs=torch.stack([s['imgs'] for s in good]),
                frame_mask=torch.stack([s['frame_mask'] for s in good]))))
            inputs = data['inputs']
            emb = model.encode_video(inputs['frames'], inputs['frame_mask'])
            chunks.append(emb.float().cpu().numpy())  # [B, D]
            # Per batch: with broken weights fail at once, not after hours.
            check_finite_rows(chunks[-1], [dataset.paths[s['index']]
                                           for s in good], 'video(s)')
        done += len(batch)
        if progress is not None:
            progress(done, len(dataset))
    dim = chunks[0].shape[1] if chunks else 0
    emb = (np.concatenate(chunks) if chunks else
           np.zeros((0, dim), dtype=np.float32))
    return emb.astype(np.float32, copy=False), info


def encode_texts(model: torch.nn.Module, cfg: Config,
                 texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Embed texts with a loose-head model -> float32 [N, D] unit vectors.

    Tokenised with the test pipeline's TokenizeCaptions settings, so a query
    is read exactly as an evaluation caption. Raises ValueError naming the
    texts whose embedding is not finite.
    """
    _check_loose(model)
    tokenizer_path, max_words = text_settings(cfg)
    return _embed_texts(model, load_tokenizer(tokenizer_path), max_words,
                        texts, batch_size)


@torch.no_grad()
def _embed_texts(model: torch.nn.Module, tokenizer, max_words: int,
                 texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenize(tokenizer, list(texts[start:start + batch_size]),
                             max_words)
        emb = model.encode_text(torch.from_numpy(ids).to(device),
                                torch.from_numpy(mask).to(device))
        chunks.append(emb.float().cpu().numpy())
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    emb = np.concatenate(chunks).astype(np.float32, copy=False)
    check_finite_rows(emb, [repr(text) for text in texts], 'text(s)')
    return emb


def check_query(tokenizer, query: str, max_words: int) -> None:
    """Refuse a query the model cannot read; warn about the part it cannot.

    An empty or blank query, or one whose words the tokenizer reads only as
    its unknown token, would still produce a ranking, of nothing the user
    wrote: ValueError. Unknown words, and words past ``max_words`` (the text
    length with its start and end tokens), are named in a
    :class:`QueryWarning`.
    """
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f'the query {query!r} is empty: give some words to '
                         'search for')
    words = query.split()
    pieces = tokenizer(words, add_special_tokens=False)['input_ids']
    unk = tokenizer.unk_token_id
    if not any(token != unk for ids in pieces for token in ids):
        raise ValueError(
            f'the tokenizer knows none of the words of the query {query!r} '
            f'(each is read as its unknown token {tokenizer.unk_token!r}), '
            'so a ranking would not depend on them')
    unknown = [word for word, ids in zip(words, pieces, strict=True)
               if unk is not None and unk in ids]
    if unknown:
        warnings.warn(
            f'query {query!r}: the tokenizer does not know '
            f'{", ".join(map(repr, unknown))}; read as its unknown token '
            f'{tokenizer.unk_token!r}', QueryWarning, stacklevel=3)
    # The tokens each word ends at, to name the words the model never sees.
    ends = np.cumsum([len(ids) for ids in pieces])
    dropped = [word for word, end in zip(words, ends, strict=True)
               if end > max_words - 2]
    if dropped:
        warnings.warn(
            f'query {query!r} is {ends[-1]} tokens long and the model reads '
            f'the first {max_words - 2}; ignored: {" ".join(dropped)!r}',
            QueryWarning, stacklevel=3)


def encode_query(model: torch.nn.Module, cfg: Config,
                 query: str) -> np.ndarray:
    """One search query -> float32 [D] unit vector, after
    :func:`check_query` (errors for an empty or unreadable query, a
    :class:`QueryWarning` naming the words the model does not read)."""
    _check_loose(model)
    tokenizer_path, max_words = text_settings(cfg)
    tokenizer = load_tokenizer(tokenizer_path)
    check_query(tokenizer, query, max_words)
    return _embed_texts(model, tokenizer, max_words, [query])[0]


@torch.no_grad()
def tight_scores(model: torch.nn.Module, cfg: Config, query: str,
                 paths: Sequence[str | Path],
                 batch_size: int = 8) -> np.ndarray:
    """Pair logits of ``query`` against each video file with a tightTransf
    model -> float32 [K] (NaN for a file that cannot be read).

    The cross-encoder needs every (text, video) pair, so it re-ranks a short
    list from a loose index instead of scoring a whole collection.
    """
    if model.embeds_videos:
        raise ValueError('tight_scores needs a tightTransf model (a loose '
                         'model\'s scores are its index\'s)')
    tokenizer_path, max_words = text_settings(cfg)
    ids, mask = tokenize(load_tokenizer(tokenizer_path), [query], max_words)
    device = next(model.parameters()).device
    text = model.encode_text(torch.from_numpy(ids).to(device),
                             torch.from_numpy(mask).to(device))  # [1, D]
    dataset = VideoFileDataset(paths, video_pipeline_cfg(cfg))
    scores = np.full(len(dataset), np.nan, dtype=np.float32)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_as_list)
    for batch in loader:
        good = [s for s in batch if s['error'] is None]
        if not good:
            continue
        data = model.data_preprocessor(dict(inputs=dict(
            imgs=torch.stack([s['imgs'] for s in good]),
            frame_mask=torch.stack([s['frame_mask'] for s in good]))))
        inputs = data['inputs']
        frames = model.encode_video(inputs['frames'], inputs['frame_mask'])
        logits = model.scores(text, frames, inputs['frame_mask']).full()[0]
        for sample, logit in zip(good, logits.float().cpu().tolist(),
                                 strict=True):
            if not np.isfinite(logit):
                raise ValueError(
                    f'the pair logit of query {query!r} and video '
                    f'{dataset.paths[sample["index"]]} is not finite ({logit});'
                    ' the tight model\'s weights are probably not finite')
            scores[sample['index']] = logit
    return scores
