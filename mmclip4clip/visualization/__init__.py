"""Pictures of retrieval results (Pillow only)."""
from .retrieval import (
    load_dump,
    query_image_size,
    read_frames,
    select_queries,
    visualize_retrieval,
)

__all__ = [
    'load_dump', 'query_image_size', 'read_frames', 'select_queries',
    'visualize_retrieval'
]
