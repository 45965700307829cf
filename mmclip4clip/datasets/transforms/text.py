"""Caption tokenisation with the tokenizer saved beside the CLIP weights."""
from __future__ import annotations

import numpy as np
from mmcv.transforms import BaseTransform

from mmclip4clip.registry import TRANSFORMS


def load_tokenizer(path: str):
    """A ``transformers`` tokenizer from a directory or hub id."""
    # Imported here: transformers takes a while to import and only a
    # pipeline that tokenises needs it.
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise OSError(f'cannot load a tokenizer from {path!r}: it is neither '
                      'a Hugging Face tokenizer directory nor a hub id that '
                      f'can be reached ({err})') from err


def tokenize(tokenizer, captions: list[str],
             max_words: int) -> tuple[np.ndarray, np.ndarray]:
    """``[SOT] + bpe(caption)[:L-2] + [EOT]`` zero-padded to L
    (docs/models.md#text).

    Returns int64 ``input_ids`` and ``attention_mask``, both [K, L].
    """
    ids = np.zeros((len(captions), max_words), dtype=np.int64)
    mask = np.zeros((len(captions), max_words), dtype=np.int64)
    pieces = tokenizer(list(captions), add_special_tokens=False)['input_ids']
    for row, tokens in enumerate(pieces):
        tokens = [tokenizer.bos_token_id, *tokens[:max_words - 2],
                  tokenizer.eos_token_id]
        ids[row, :len(tokens)] = tokens
        mask[row, :len(tokens)] = 1
    return ids, mask


@TRANSFORMS.register_module()
class TokenizeCaptions(BaseTransform):
    """Tokenise ``captions`` (list of str) into ``input_ids`` and
    ``attention_mask`` ([K, max_words] int64).

    Args:
        tokenizer: directory (usually the CLIP weights' directory) or hub id
            of a ``transformers`` tokenizer.
        max_words: L, the text length including the start and end tokens.
    """

    def __init__(self, tokenizer: str, max_words: int = 32) -> None:
        if max_words < 3:
            raise ValueError(f'max_words must be >= 3, got {max_words}')
        self.tokenizer_path = tokenizer
        self.max_words = max_words
        self._tokenizer = None  # loaded lazily, once per worker

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_path)
        return self._tokenizer

    def transform(self, results: dict) -> dict:
        ids, mask = tokenize(self.tokenizer, results['captions'],
                             self.max_words)
        results['input_ids'] = ids
        results['attention_mask'] = mask
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(tokenizer={self.tokenizer_path!r}, '
                f'max_words={self.max_words})')
