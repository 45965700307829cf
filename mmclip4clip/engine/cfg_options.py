"""Checks of ``--cfg-options`` against what each component accepts.

mmengine merges ``KEY=VALUE`` overrides into the config blindly: a misspelt
argument of a component that takes ``**kwargs`` (``CheckpointHook``) is
accepted and crashes an epoch later, a misspelt key of a
``transformers`` config is silently ignored, and a value of the wrong type
fails deep inside torch without naming the key. :func:`check_cfg_options`
refuses all of these before anything is built.

What a dict accepts is read from the component its ``type`` names (looked up
in our registries, which fall back to mmaction2's and mmengine's): the
arguments of its ``__init__``, following ``**kwargs`` up the class hierarchy
(``super().__init__(**kwargs)``). A dict argument that a component passes on
as keyword arguments to another class is declared by the component in a
``kwargs_targets`` class attribute (``{'config': CLIPConfig}``); a
``transformers`` config accepts the keys of its default ``to_dict()`` and
declares its own nested configs in ``sub_configs``.
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch.distributed as dist
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope, Registry
from mmengine.runner import Runner
from torch.utils.data import DataLoader

from mmclip4clip import registry as our_registries

EMPTY = inspect.Parameter.empty

# Top-level keys the mmengine Runner reads, plus those our configs use.
RUNNER_KEYS = frozenset({
    'auto_scale_lr', 'custom_hooks', 'custom_imports', 'data_preprocessor',
    'default_hooks', 'default_scope', 'env_cfg', 'experiment_name',
    'launcher', 'load_from', 'log_level', 'log_processor',
    'model_wrapper_cfg', 'optim_wrapper', 'param_scheduler', 'randomness',
    'resume', 'test_cfg', 'test_dataloader', 'test_evaluator', 'train_cfg',
    'train_dataloader', 'val_cfg', 'val_dataloader', 'val_evaluator',
    'visualizer', 'model', 'work_dir', 'find_unused_parameters'
})

# Dicts without a ``type`` whose keys go to a known callable.
UNTYPED_TARGETS = {
    'train_dataloader': DataLoader,
    'val_dataloader': DataLoader,
    'test_dataloader': DataLoader,
    'randomness': Runner.set_randomness,
    # mmengine passes these to init_process_group (timeout in seconds).
    'env_cfg.dist_cfg': dist.init_process_group,
}

# Settings that must be positive (or, for num_workers, not negative) integers,
# checked on the merged config whoever set them.
POSITIVE_INTS = ('train_cfg.max_epochs', 'train_cfg.max_iters',
                 'train_cfg.val_interval', 'train_dataloader.batch_size',
                 'val_dataloader.batch_size', 'test_dataloader.batch_size',
                 'default_hooks.logger.interval')
NON_NEGATIVE_INTS = ('train_dataloader.num_workers',
                     'val_dataloader.num_workers',
                     'test_dataloader.num_workers')
POSITIVE_NUMBERS = ('env_cfg.dist_cfg.timeout', )


class ConfigOptionError(ValueError):
    """A ``--cfg-options`` entry (or a merged setting) that cannot work."""


@dataclass
class Argument:
    """One key a component accepts: its default, annotation and, for a dict
    passed on as keyword arguments, the class that receives them."""
    default: Any = EMPTY
    annotation: Any = EMPTY
    target: Any = None


@dataclass
class Accepted:
    """The keys a dict of the config accepts, and who accepts them."""
    owner: str
    arguments: dict[str, Argument] = field(default_factory=dict)
    # Set when the owner takes **kwargs that reach nothing we can read.
    swallows_kwargs: bool = False


def _name(obj) -> str:
    module = getattr(obj, '__module__', '') or ''
    qualname = getattr(obj, '__qualname__', repr(obj))
    if module.startswith('transformers'):
        return f'transformers.{qualname}'
    return qualname


@lru_cache(maxsize=None)
def accepted_arguments(obj) -> Accepted:
    """The keyword arguments a class or function accepts (see the module
    docstring for ``**kwargs``, ``kwargs_targets`` and ``transformers``
    configs)."""
    # Imported here, not at the top: importing mmclip4clip stays free of
    # transformers until a CLIP or a --cfg-options check needs it.
    from transformers import PretrainedConfig

    if inspect.isclass(obj) and issubclass(obj, PretrainedConfig):
        nested = getattr(obj, 'sub_configs', None) or {}
        return Accepted(_name(obj), {
            key: Argument(default=value, target=nested.get(key))
            for key, value in obj().to_dict().items()})
    targets = getattr(obj, 'kwargs_targets', {})
    accepted = Accepted(_name(obj))
    functions = [cls.__dict__['__init__'] for cls in obj.__mro__
                 if '__init__' in cls.__dict__ and cls is not object] \
        if inspect.isclass(obj) else [obj]
    for function in functions:
        parameters = inspect.signature(function).parameters.values()
        for param in parameters:
            if param.name == 'self' or param.kind in (
                    param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            accepted.arguments.setdefault(param.name, Argument(
                param.default, param.annotation, targets.get(param.name)))
        accepted.swallows_kwargs = any(p.kind is p.VAR_KEYWORD
                                       for p in parameters)
        if not accepted.swallows_kwargs:
            break  # otherwise **kwargs go up to the next __init__
    if inspect.isclass(obj) and issubclass(obj, Hook):
        # The Runner takes ``priority`` out of every hook's config.
        accepted.arguments.setdefault('priority',
                                      Argument(annotation='str | int'))
    return accepted


def _registries() -> list[Registry]:
    return [r for r in vars(our_registries).values()
            if isinstance(r, Registry)]


def resolve_type(type_name) -> Any:
    """The class or function a ``type`` names, from any of our registries
    (and their mmaction2 / mmengine parents); None if none has it."""
    if not isinstance(type_name, str):
        return type_name
    for registry in _registries():
        found = registry.get(type_name)
        if found is not None:
            return found
    return None


def _registered_names() -> set[str]:
    names = set()
    for registry in _registries():
        while registry is not None:
            names.update(registry.module_dict)
            registry = registry.parent
    return names


def _unregistered(key: str, type_name) -> ConfigOptionError:
    return ConfigOptionError(
        f'--cfg-options {key}={type_name!r}: no component of that name is '
        f'registered{_close_matches(str(type_name), _registered_names())}')


def _close_matches(word: str, candidates) -> str:
    matches = difflib.get_close_matches(word, sorted(map(str, candidates)),
                                        n=3, cutoff=0.6)
    return f' (did you mean: {", ".join(matches)}?)' if matches else ''


# --- value types ------------------------------------------------------------

_KINDS = {'int': int, 'float': float, 'str': str, 'bool': bool,
          'None': type(None), 'NoneType': type(None), 'dict': dict,
          'Dict': dict, 'list': list, 'List': list, 'tuple': list,
          'Tuple': list, 'Sequence': list}


def _annotation_kinds(annotation) -> set[type] | None:
    """Plain types an annotation allows (``int | None``, ``Optional[str]``),
    or None if it names anything else (then it is not used)."""
    if annotation is EMPTY:
        return None
    text = annotation if isinstance(annotation, str) \
        else inspect.formatannotation(annotation)
    text = text.replace('typing.', '')
    if text.startswith('Optional[') and text.endswith(']'):
        parts = [text[len('Optional['):-1], 'None']
    elif text.startswith('Union[') and text.endswith(']'):
        parts = text[len('Union['):-1].split(',')
    else:
        parts = text.split('|')
    kinds = set()
    for part in parts:
        base = part.strip().split('[')[0]
        if base not in _KINDS:
            return None
        kinds.add(_KINDS[base])
    return kinds


def _kind_of(value) -> type | None:
    for kind in (bool, int, float, str, dict):
        if isinstance(value, kind):
            return kind
    if isinstance(value, (list, tuple)):
        return list
    if value is None:
        return type(None)
    return None


def _fits(value, kind: type) -> bool:
    if kind is bool or kind is type(None):
        return _kind_of(value) is kind
    if kind is int:
        return _kind_of(value) is int
    if kind is float:
        return _kind_of(value) in (int, float)
    return _kind_of(value) is kind


def _check_value(key: str, value, old, argument: Argument | None) -> None:
    """``value`` must have the type of the ``old`` value (or, for a new key,
    of the default) it replaces; ints are accepted for floats, and None where
    the argument's default or annotation allows it."""
    argument = argument or Argument()
    kinds = _annotation_kinds(argument.annotation) or set()
    reference = old if old is not EMPTY else argument.default
    if reference not in (EMPTY, None) and _kind_of(reference) is not None:
        kinds.add(_kind_of(reference))
    if not kinds:
        return  # nothing says what it should be
    if argument.default is None or reference is None:
        kinds.add(type(None))
    if any(_fits(value, kind) for kind in kinds):
        return
    wanted = ' or '.join(sorted(
        'None' if k is type(None) else k.__name__ for k in kinds))
    replaces = f' (it replaces {reference!r})' \
        if reference not in (EMPTY, None) else ''
    raise ConfigOptionError(
        f'--cfg-options {key}={value!r}: expected {wanted}{replaces}, '
        f'got {type(value).__name__}')


# --- walking a key ----------------------------------------------------------


def _root_accepted(cfg: Config) -> Accepted:
    runner = accepted_arguments(Runner)
    return Accepted('the Runner', {
        key: runner.arguments.get(key, Argument())
        for key in RUNNER_KEYS | set(cfg.keys())})


def _accepted_by(node, path: str, argument: Argument | None,
                 options: dict) -> Accepted | None:
    """What the dict ``node`` at ``path`` accepts; None for a list."""
    if isinstance(node, (list, tuple)):
        return None
    type_name = options.get(f'{path}.type', node.get('type'))
    if type_name is not None:
        component = resolve_type(type_name)
        if component is None:
            raise _unregistered(f'{path}.type', type_name)
        return accepted_arguments(component)
    target = (argument.target if argument else None) \
        or UNTYPED_TARGETS.get(path)
    if target is not None:
        return accepted_arguments(target)
    # A plain dict: only the keys it already has.
    return Accepted(path, {key: Argument() for key in node})


def _child(node, part: str):
    """``(value, exists)`` of ``node[part]`` for a dict or a list."""
    if isinstance(node, (list, tuple)):
        if part.isdigit() and int(part) < len(node):
            return node[int(part)], True
        return EMPTY, False
    if part in node:
        return node[part], True
    return EMPTY, False


def _unknown(key: str, path: str, part: str, node,
             accepted: Accepted | None) -> ConfigOptionError:
    if isinstance(node, (list, tuple)):
        return ConfigOptionError(
            f'--cfg-options {key}: {path} is not an index of a list of '
            f'{len(node)} entries')
    if accepted.owner == 'the Runner':
        return ConfigOptionError(
            f'--cfg-options {key}: the config has no key {part!r} and the '
            f'Runner does not read one{_close_matches(part, accepted.arguments)}')
    candidates = set(accepted.arguments) | set(node)
    why = ''
    if accepted.swallows_kwargs:
        why = (f'; it takes **kwargs, but nothing they are passed to '
               f'accepts {part!r}')
    return ConfigOptionError(
        f'--cfg-options {key}: {path} is not an argument of '
        f'{accepted.owner}{why}{_close_matches(part, candidates)}')


def _check_option(cfg: Config, key: str, value, options: dict) -> None:
    parts = key.split('.')
    node: Any = cfg
    accepted: Accepted | None = _root_accepted(cfg)
    for depth, part in enumerate(parts):
        path = '.'.join(parts[:depth + 1])
        child, exists = _child(node, part)
        argument = accepted.arguments.get(part) if accepted else None
        if part in ('type', '_scope_') and isinstance(node, dict) \
                and depth > 0:
            argument = Argument(annotation='str')
            if part == 'type' and depth == len(parts) - 1 and \
                    resolve_type(value) is None:
                raise _unregistered(key, value)
        if not exists and argument is None:
            raise _unknown(key, path, part, node, accepted)
        if depth == 0 and part not in RUNNER_KEYS:
            raise ConfigOptionError(
                f'--cfg-options {key}: {part!r} is a variable of the config '
                'file, read only while the file is parsed; setting it here '
                'changes nothing. Set the entries that use it instead')
        if depth == len(parts) - 1:
            _check_value(key, value, child, argument)
            return
        node = child if exists else {}
        if not isinstance(node, (dict, list, tuple)):
            raise ConfigOptionError(
                f'--cfg-options {key}: {path} is a {type(node).__name__}, '
                'not a dict or a list')
        accepted = _accepted_by(node, path, argument, options)


def _get(cfg: Config, path: str):
    node: Any = cfg
    for part in path.split('.'):
        if not isinstance(node, (dict, Config)) or part not in node:
            return None
        node = node[part]
    return node


def check_settings(cfg: Config) -> None:
    """Range checks of the loop and loader settings, naming the key."""
    for path in POSITIVE_INTS + NON_NEGATIVE_INTS + POSITIVE_NUMBERS:
        value = _get(cfg, path)
        if value is None:
            continue
        if path in POSITIVE_NUMBERS:
            ok, wanted = _kind_of(value) in (int, float) and value > 0, \
                'a positive number'
        elif path in NON_NEGATIVE_INTS:
            ok, wanted = _kind_of(value) is int and value >= 0, \
                'an integer >= 0'
        else:
            ok, wanted = _kind_of(value) is int and value > 0, \
                'a positive integer'
        if not ok:
            raise ConfigOptionError(f'{path} must be {wanted}, got {value!r}')


def check_cfg_options(cfg: Config, options: dict) -> None:
    """Refuse any ``--cfg-options`` entry that names a key its component does
    not accept, or gives a value of another type than the one it replaces.

    Nothing is built: components are only looked up in the registries.
    """
    scope = cfg.get('default_scope') or our_registries.SCOPE
    with DefaultScope.overwrite_default_scope(scope):
        for key, value in options.items():
            _check_option(cfg, key, value, options)
