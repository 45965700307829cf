from .encode import encode_texts, encode_videos
from .index import VideoIndex, load_index, search_index, update_index
from .inference import init_retriever

__all__ = [
    'VideoIndex', 'encode_texts', 'encode_videos', 'init_retriever',
    'load_index', 'search_index', 'update_index'
]
