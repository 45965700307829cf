"""Pictures of retrieval results (Pillow only)."""
from .retrieval import (
    load_dump,
    query_image_size,
    read_frames,
    resolve_video_paths,
    select_queries,
    visualize_retrieval,
)

__all__ = [
    'load_dump', 'query_image_size', 'read_frames', 'resolve_video_paths',
    'select_queries', 'visualize_retrieval'
]
