"""CLIP4Clip text-video retrieval as an OpenMMLab plugin for MMAction2.

Importing the package registers every component in the ``mmclip4clip`` scope.
"""
from . import datasets, engine, evaluation, models  # noqa: F401
from .version import __version__

__all__ = ['__version__']
