"""The sections of the performance benchmark ``tools/analysis_tools/benchmark.py``:
tooling beside that script, not part of the ``mmclip4clip`` library (which
it only imports)."""
from .data_pipeline import data_pipeline
from .indexing import index_build_rate
from .measure import count_flops, matmul_peak_flops, median_seconds, peak_memory
from .search import search_latency
from .sections import (
    FULL,
    QUICK,
    SECTIONS,
    SIZES,
    TINY,
    Sizes,
    loose_scoring,
    retrieval_metrics,
    run_section,
    text_encoding,
    tight_scoring,
    training_step,
    video_encoding,
)

__all__ = [
    'FULL', 'QUICK', 'SECTIONS', 'SIZES', 'Sizes', 'TINY', 'count_flops',
    'data_pipeline', 'index_build_rate', 'loose_scoring', 'matmul_peak_flops',
    'median_seconds', 'peak_memory', 'retrieval_metrics', 'run_section',
    'search_latency', 'text_encoding', 'tight_scoring', 'training_step',
    'video_encoding'
]
