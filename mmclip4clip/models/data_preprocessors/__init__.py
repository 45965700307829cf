from .video_text import CLIP_MEAN, CLIP_STD, VideoTextDataPreprocessor

__all__ = ['CLIP_MEAN', 'CLIP_STD', 'VideoTextDataPreprocessor']
