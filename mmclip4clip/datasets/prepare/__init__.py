"""Annotation files of the public benchmarks from their own distributions.

One module per dataset turns the files as they unpack into mmclip4clip's
annotation format (see :mod:`mmclip4clip.datasets.video_text_dataset`);
``tools/data/prepare_<dataset>.py`` are the command-line entry points.
"""
from .activitynet import build_activitynet_splits, prepare_activitynet
from .common import SourceFormatError, Split, VideoFileLookup
from .didemo import build_didemo_splits, prepare_didemo
from .lsmdc import build_lsmdc_splits, prepare_lsmdc
from .msrvtt import build_msrvtt_splits, prepare_msrvtt
from .msvd import build_msvd_splits, prepare_msvd

__all__ = [
    'SourceFormatError', 'Split', 'VideoFileLookup',
    'build_activitynet_splits', 'build_didemo_splits', 'build_lsmdc_splits',
    'build_msrvtt_splits', 'build_msvd_splits', 'prepare_activitynet',
    'prepare_didemo', 'prepare_lsmdc', 'prepare_msrvtt', 'prepare_msvd'
]
