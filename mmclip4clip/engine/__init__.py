from .amp import MixedPrecisionOptimWrapper
from .compat import (
    enable_cpu_distributed,
    register_checkpoint_safe_types,
    register_safe_checkpoint_loader,
)
from .hooks import SafeCheckpointHook
from .optim_constructor import CLIP4ClipOptimWrapperConstructor
from .retrieval_loops import RetrievalTestLoop, RetrievalValLoop
from .skip_summary import SkipSummaryHook

__all__ = [
    'CLIP4ClipOptimWrapperConstructor', 'MixedPrecisionOptimWrapper',
    'RetrievalTestLoop', 'RetrievalValLoop',
    'SafeCheckpointHook', 'SkipSummaryHook',
    'enable_cpu_distributed', 'register_checkpoint_safe_types',
    'register_safe_checkpoint_loader'
]

# torch >= 2.6 loads checkpoints in safe mode; let mmengine resume under it.
register_checkpoint_safe_types()
register_safe_checkpoint_loader()
