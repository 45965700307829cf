from .inference import init_retriever

__all__ = ['init_retriever']
