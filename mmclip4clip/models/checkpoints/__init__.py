"""Converters from third-party checkpoint layouts to Hugging Face models."""
from .openai_clip import (
    clip_from_openai,
    load_openai_state_dict,
    openai_clip_config,
    openai_to_hf,
)

__all__ = [
    'clip_from_openai', 'load_openai_state_dict', 'openai_clip_config',
    'openai_to_hf'
]
