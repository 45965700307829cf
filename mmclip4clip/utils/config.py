"""Find the components of a config by the class their ``type`` names.

A ``type`` may be a registered name (``'TokenizeCaptions'``), a scoped one
(``'mmclip4clip.TokenizeCaptions'``, as mmengine writes when a config of
another scope refers to ours) or the class itself; code that rewrites
pipelines or evaluators asks for the class name, whichever way it is given.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping


def type_name(component: object) -> str | None:
    """The class name a config dict's ``type`` names, scope removed; None
    for a dict without ``type`` or anything else."""
    if not isinstance(component, Mapping) or component.get('type') is None:
        return None
    kind = component['type']
    name = kind if isinstance(kind, str) else getattr(kind, '__name__',
                                                      str(kind))
    return name.rsplit('.', 1)[-1]


def of_type(components: Iterable, name: str) -> list:
    """The config dicts among ``components`` whose type is ``name``."""
    return [c for c in components if type_name(c) == name]
