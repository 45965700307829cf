from .encode import (
    QueryWarning,
    encode_query,
    encode_texts,
    encode_videos,
    tight_scores,
)
from .index import (
    InvalidIndexError,
    VideoIndex,
    load_index,
    rerank_with_tight,
    search_embedding,
    search_index,
    update_index,
)
from .inference import init_retriever

__all__ = [
    'InvalidIndexError', 'QueryWarning', 'VideoIndex', 'encode_query',
    'encode_texts', 'encode_videos', 'init_retriever',
    'load_index', 'rerank_with_tight', 'search_embedding', 'search_index',
    'tight_scores', 'update_index'
]
