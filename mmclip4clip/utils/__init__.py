from .cli import at_least
from .fileio import atomic_path, atomic_write

__all__ = ['at_least', 'atomic_path', 'atomic_write']
