"""The training config a runner checkpoint carries, read as data.

An mmengine runner saves its whole config as Python source text in the
checkpoint's ``meta['cfg']`` (``Config.pretty_text``). Some shapes live only
there: mmaction2's ``TransformerAdapter`` takes its attention head count from
``transformer_heads``, which no weight's shape reveals. The text is parsed
with ``ast`` and only literal values are taken from it; it is never executed.
"""
from __future__ import annotations

import ast
import re
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mmclip4clip.engine.checkpoint_io import load_checkpoint_file

__all__ = ['NOT_LITERAL', 'config_literals', 'mmaction2_adapter_heads']


class _NotLiteral:
    """Stands for a value the config computes with code (a call, a name)."""

    def __repr__(self) -> str:
        return '<not a literal>'


NOT_LITERAL = _NotLiteral()


def _literal(node: ast.expr) -> Any:
    """The value of a literal expression: constants (signed numbers too),
    lists, tuples, dicts with constant keys and ``dict(key=...)`` calls, as in
    ``Config.pretty_text``; ``NOT_LITERAL`` for anything else."""
    if isinstance(node, ast.Constant):
        return node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant)
            and type(node.operand.value) in (int, float)):
        return -node.operand.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(item) for item in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        if not all(isinstance(key, ast.Constant) for key in node.keys):
            return NOT_LITERAL  # a ``**mapping`` entry or a computed key
        return {key.value: _literal(value)
                for key, value in zip(node.keys, node.values)}
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == 'dict' and not node.args
            and all(keyword.arg is not None for keyword in node.keywords)):
        return {keyword.arg: _literal(keyword.value)
                for keyword in node.keywords}
    return NOT_LITERAL


def config_literals(text: str) -> dict[str, Any]:
    """Top-level ``name = value`` assignments of config source ``text``.

    Values are rebuilt from literal syntax only (see :func:`_literal`); parts
    the text computes are ``NOT_LITERAL``; other statements (imports, calls)
    are skipped. A name assigned twice keeps its last value, as in Python.

    Raises:
        SyntaxError: ``text`` is not Python source.
    """
    found: dict[str, Any] = {}
    for stmt in ast.parse(text).body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)):
            found[stmt.targets[0].id] = _literal(stmt.value)
    return found


def _stored_model(path: str, allow_pickle: bool) -> dict | None:
    """The literal ``model`` settings of ``meta['cfg']`` in checkpoint
    ``path``; None when it stores no config text."""
    ckpt = load_checkpoint_file(path, map_location='cpu',
                                allow_pickle=allow_pickle,
                                mmap=zipfile.is_zipfile(path))
    meta = ckpt.get('meta') if isinstance(ckpt, Mapping) else None
    text = meta.get('cfg') if isinstance(meta, Mapping) else None
    if not isinstance(text, str):
        return None
    try:
        model = config_literals(text).get('model')
    except SyntaxError as err:
        raise ValueError(f"{path}: the config stored in meta['cfg'] is not "
                         f'Python source ({err})') from err
    return model if isinstance(model, dict) else {}


def _setting(settings: dict | None, name: str) -> Any:
    """``settings[name]`` if it is a plain int or str literal, else None."""
    value = (settings or {}).get(name)
    return value if type(value) in (int, str) else None


def mmaction2_adapter_heads(path: str, state_dict: Mapping[str, Tensor],
                            num_heads: int | None = None,
                            allow_pickle: bool = False) -> int | None:
    """Attention heads of the ``TransformerAdapter`` of mmaction2 checkpoint
    ``path`` (flat ``state_dict`` already loaded); None when it has none.

    The head count comes from ``num_heads`` (the user's ``--num-heads``)
    if given, else from the stored config's literal
    ``model.adapter.transformer_heads``. The stored adapter's type, frame
    count, width and depth must match the weights, so a config of another
    model is not trusted.

    Raises:
        ValueError (naming ``path``): the head count is unknown, does not
            divide the width, the stored config contradicts the weights, or
            ``num_heads`` is given for a checkpoint without the adapter.
    """
    model = _stored_model(path, allow_pickle)
    adapter = model.get('adapter') if model is not None else None
    adapter = adapter if isinstance(adapter, dict) else None
    stored_type = _setting(adapter, 'type')
    table = state_dict.get('adapter.positional_embedding')
    if table is None:
        if num_heads is not None:
            raise ValueError(f'{path} holds no TransformerAdapter weights; '
                             '--num-heads does not apply')
        if stored_type == 'TransformerAdapter':
            raise ValueError(f'{path}: its stored config has a '
                             'TransformerAdapter, but its weights have none')
        return None
    if stored_type is not None and stored_type != 'TransformerAdapter':
        raise ValueError(f'{path}: its stored config has a {stored_type}, but '
                         'its weights hold a TransformerAdapter')
    block = re.compile(r'adapter\.transformer\.resblocks\.(\d+)\.')
    shapes = dict(
        num_segs=table.shape[0], transformer_width=table.shape[1],
        transformer_layers=len({m.group(1) for key in state_dict
                                if (m := block.match(key))}))
    for name, value in shapes.items():
        stored = _setting(adapter, name)
        if stored is not None and stored != value:
            raise ValueError(
                f'{path}: its stored config says {name}={stored}, its weights '
                f'{value}; the config is not this model\'s')

    stored_heads = _setting(adapter, 'transformer_heads')
    if num_heads is not None:
        if stored_heads is not None and stored_heads != num_heads:
            warnings.warn(
                f'{path}: --num-heads {num_heads} overrides the stored '
                f'config\'s transformer_heads={stored_heads}', stacklevel=2)
        heads = num_heads
    elif isinstance(stored_heads, int):
        heads = stored_heads
    else:
        reason = ('it stores no config (meta["cfg"])' if model is None else
                  'its stored config has no literal '
                  'model.adapter.transformer_heads')
        raise ValueError(
            f'{path} does not say how many attention heads its '
            f'TransformerAdapter has: the weights cannot tell and {reason}; '
            'pass --num-heads (the training config\'s '
            'model.adapter.transformer_heads)')
    width = shapes['transformer_width']
    if heads < 1 or width % heads:
        raise ValueError(f'{path}: {heads} heads do not divide the '
                         f'TransformerAdapter width {width}')
    return heads
