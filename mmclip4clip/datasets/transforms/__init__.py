from .formatting import PackVideoTextInputs
from .loading import (
    AVDecode,
    AVInit,
    BrokenVideoError,
    VideoFrames,
    decode_threads,
)
from .processing import CLIPResizeCrop, resize_center_crop
from .sampling import (
                       SampleFramesByRate,
                       order_frames,
                       sample_frame_indices,
                       slice_frames,
)
from .text import TokenizeCaptions, load_tokenizer, tokenize

__all__ = [
    'AVDecode', 'AVInit', 'BrokenVideoError', 'CLIPResizeCrop',
    'PackVideoTextInputs', 'SampleFramesByRate', 'TokenizeCaptions',
    'VideoFrames', 'decode_threads',
    'load_tokenizer', 'order_frames', 'resize_center_crop',
    'sample_frame_indices', 'slice_frames', 'tokenize'
]
