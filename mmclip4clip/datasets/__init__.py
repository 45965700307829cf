# mmaction2's transforms (DecordInit, DecordDecode, ...) register on import;
# our registries find them as parents.
import mmaction.datasets  # noqa: F401

from .annotations import AnnotationError, load_annotations
from .collate import video_text_collate
from .transforms import *  # noqa: F401,F403
from .video_text_dataset import VideoTextDataset

__all__ = [
    'AnnotationError', 'VideoTextDataset', 'load_annotations',
    'video_text_collate'
]
