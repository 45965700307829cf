from .fileio import atomic_path, atomic_write

__all__ = ['atomic_path', 'atomic_write']
