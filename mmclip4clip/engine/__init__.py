from .amp import MixedPrecisionOptimWrapper
from .checkpoint_io import (
    CheckpointFileError,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    compare_weights,
    load_checkpoint_file,
    load_weights,
)
from .compat import enable_cpu_distributed
from .hooks import AtomicCheckpointHook, SafeCheckpointHook
from .optim_constructor import CLIP4ClipOptimWrapperConstructor
from .retrieval_loops import RetrievalTestLoop, RetrievalValLoop
from .runner import CLIP4ClipRunner, build_runner
from .skip_summary import SkipSummaryHook

__all__ = [
    'AtomicCheckpointHook', 'CLIP4ClipOptimWrapperConstructor',
    'CLIP4ClipRunner', 'CheckpointFileError', 'CheckpointMismatchError',
    'MixedPrecisionOptimWrapper', 'RetrievalTestLoop', 'RetrievalValLoop',
    'SafeCheckpointHook', 'SkipSummaryHook', 'UnsafeCheckpointError',
    'build_runner', 'compare_weights', 'enable_cpu_distributed',
    'load_checkpoint_file', 'load_weights'
]
