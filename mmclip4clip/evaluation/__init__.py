from . import functional
from .metrics import RetrievalMetric

__all__ = ['RetrievalMetric', 'functional']
