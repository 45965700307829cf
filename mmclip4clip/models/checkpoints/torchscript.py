"""TorchScript archives read as data: module state without running their code.

``torch.jit.save`` writes a zip whose entries sit under one folder
(``<archive>/``):

- ``data.pkl``: the module tree, pickled. Each module is an object of a
  TorchScript class ``__torch__.<path>.<Name>``, made with NEWOBJ and given
  the dict of its attributes with BUILD. A tensor is
  ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
  whose storage is the persistent id
  ``('storage', torch.<Type>Storage, key, location, numel)``;
- ``data/<key>``: each storage's raw bytes (byte order in ``byteorder``);
- ``code/__torch__/<path>.py``: the classes' TorchScript source. A module
  class lists which of its tensor attributes are state in
  ``__parameters__`` and ``__buffers__``;
- ``constants.pkl``: tensors the code uses, not module state (unused here).

``torch.jit.load`` compiles that code and, for a class that defines
``__setstate__`` (or a C++ class bound into TorchScript), runs it on the
pickled state: that is where an archive executes its own code at load time.

:func:`read_torchscript_state_dict` instead unpickles ``data.pkl`` with only
the globals that rebuild tensors and plain containers (those of
``torch.load``'s ``weights_only`` allow-list, plus TorchScript's list type
tags, which return their list) and turns every ``__torch__`` class into an
inert record of its attributes; the class source is read with
``ast`` for its parameter and buffer names, never executed. An archive whose
state would pass through code (``__setstate__``, a class not defined as a
module in the archive, any other global) is refused with an error naming the
file.
"""
from __future__ import annotations

import ast
import io
import pickle
import sys
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ['is_torchscript_archive', 'read_torchscript_state_dict']

# ``torch.<Name>Storage`` globals of the storages' persistent ids.
_STORAGE_DTYPES = {
    'DoubleStorage': torch.float64,
    'FloatStorage': torch.float32,
    'HalfStorage': torch.float16,
    'BFloat16Storage': torch.bfloat16,
    'LongStorage': torch.int64,
    'IntStorage': torch.int32,
    'ShortStorage': torch.int16,
    'CharStorage': torch.int8,
    'ByteStorage': torch.uint8,
    'BoolStorage': torch.bool,
}


def _list_as_is(data: list, *type_tag: str) -> list:
    """``torch.jit._pickle``'s list builders and ``restore_type_tag``: they
    only attach TorchScript's static type to a list, which Python ignores."""
    return data


# ``torch.jit._pickle`` helpers that TorchScript pickles call on containers.
_TYPE_TAG_HELPERS = ('build_intlist', 'build_tensorlist', 'build_doublelist',
                     'build_boollist', 'restore_type_tag')


class _Refusal(pickle.UnpicklingError):
    """The archive's state cannot be read without running code from it."""


@dataclass(frozen=True)
class _ModuleClass:
    """What the archive's source says of one TorchScript module class."""

    qualname: str
    parameters: frozenset[str]
    buffers: frozenset[str]


class _ModuleRecord:
    """One module of the archive as plain data: its class and attributes.

    The pickle's BUILD hands the attribute dict to ``__setstate__``, which
    only stores it; no code of the archive's class exists here.
    """

    script_class: _ModuleClass  # set on the per-class subclass
    attributes: dict[str, Any]

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, dict)
                and all(isinstance(k, str) for k in state)):
            raise _Refusal(
                f'{self.script_class.qualname} is pickled as a '
                f'{type(state).__name__}, not as a dict of its attributes')
        self.attributes = state


def _archive_folder(archive: zipfile.ZipFile) -> str | None:
    """The folder all entries sit in, if the zip is a TorchScript archive
    (``torch.jit.save`` writes ``constants.pkl`` there, ``torch.save`` does
    not)."""
    names = archive.namelist()
    folder = names[0].split('/', 1)[0] if names else ''
    return folder if f'{folder}/constants.pkl' in names else None


def is_torchscript_archive(path: str) -> bool:
    """Whether ``path`` is a zip written by ``torch.jit.save``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return _archive_folder(archive) is not None


def _module_class(node: ast.ClassDef, qualname: str) -> _ModuleClass:
    """A class definition of the archive's source -> its state names.

    Refuses what ``torch.jit.load`` would rebuild by running code: a class
    that is not a ``Module`` or that defines ``__setstate__``.
    """
    bases = {base.id for base in node.bases if isinstance(base, ast.Name)}
    if 'Module' not in bases:
        raise _Refusal(f'{qualname} is not a module class')
    names: dict[str, Any] = {}
    for stmt in node.body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name == '__setstate__':
            raise _Refusal(
                f'{qualname} defines __setstate__, code that torch.jit.load '
                'runs while loading')
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
                and stmt.targets[0].id in ('__parameters__', '__buffers__')):
            try:
                names[stmt.targets[0].id] = ast.literal_eval(stmt.value)
            except ValueError:
                names[stmt.targets[0].id] = None
    for kind in ('__parameters__', '__buffers__'):
        value = names.get(kind)
        if not (isinstance(value, list)
                and all(isinstance(v, str) for v in value)):
            raise _Refusal(
                f'{qualname} does not list its {kind} as a list of names')
    return _ModuleClass(qualname, frozenset(names['__parameters__']),
                             frozenset(names['__buffers__']))


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl``: tensors, containers and module records only."""

    def __init__(self, archive: zipfile.ZipFile, folder: str) -> None:
        super().__init__(io.BytesIO(archive.read(f'{folder}/data.pkl')))
        self._archive = archive
        self._folder = folder
        self._record_types: dict[str, type[_ModuleRecord]] = {}
        self._source_classes: dict[str, dict[str, ast.ClassDef]] = {}
        self._storages: dict[str, Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == '__torch__' or module.startswith('__torch__.'):
            return self._record_type(module, name)
        if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
            return _rebuild_tensor
        if (module, name) == ('collections', 'OrderedDict'):
            return OrderedDict
        if module == 'torch' and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == 'torch.jit._pickle' and name in _TYPE_TAG_HELPERS:
            return _list_as_is
        raise _Refusal(
            f'the pickle refers to {module}.{name}, which is not needed to '
            'rebuild tensors and containers')

    def persistent_load(self, pid: Any) -> Tensor:
        """A storage's persistent id -> its elements as a 1-D tensor."""
        if not (isinstance(pid, tuple) and len(pid) == 5
                and pid[0] == 'storage' and isinstance(pid[1], torch.dtype)
                and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise _Refusal(f'unexpected persistent id {pid!r:.100}')
        _, dtype, key, _location, numel = pid
        if key in self._storages:
            flat = self._storages[key]
            if flat.dtype != dtype or flat.numel() != numel:
                raise _Refusal(f'storage {key} is read as two types')
            return flat
        entry = f'{self._folder}/data/{key}'
        try:
            raw = self._archive.read(entry)
        except KeyError:
            raise _Refusal(f'no storage entry {entry}') from None
        itemsize = torch.empty((), dtype=dtype).element_size()
        if len(raw) != numel * itemsize:
            raise _Refusal(
                f'{entry} holds {len(raw)} bytes, not {numel} x {itemsize}')
        flat = (torch.frombuffer(bytearray(raw), dtype=dtype) if raw
                else torch.empty(0, dtype=dtype))
        self._storages[key] = flat
        return flat

    def _record_type(self, module: str, name: str) -> type[_ModuleRecord]:
        """The inert record class of ``__torch__`` class ``module.name``,
        after checking its source in ``code/`` (parsed, never run)."""
        qualname = f'{module}.{name}'
        if qualname not in self._record_types:
            node = self._classes_in(module).get(name)
            if node is None:
                raise _Refusal(
                    f'{qualname} is not a class defined in the archive\'s '
                    'code (TorchScript rebuilds such objects by running code)')
            self._record_types[qualname] = type(
                name, (_ModuleRecord, ),
                {'script_class': _module_class(node, qualname)})
        return self._record_types[qualname]

    def _classes_in(self, module: str) -> dict[str, ast.ClassDef]:
        """The class definitions of ``code/<module path>.py``."""
        if module not in self._source_classes:
            entry = f'{self._folder}/code/{module.replace(".", "/")}.py'
            try:
                tree = ast.parse(self._archive.read(entry).decode('utf-8'),
                                 filename=entry)
            except KeyError:
                tree = ast.Module(body=[], type_ignores=[])
            except (SyntaxError, UnicodeDecodeError) as err:
                raise _Refusal(f'cannot parse {entry}: {err}') \
                    from err
            self._source_classes[module] = {
                node.name: node for node in tree.body
                if isinstance(node, ast.ClassDef)}
        return self._source_classes[module]


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any,
                    requires_grad: Any, backward_hooks: Any,
                    metadata: Any = None) -> Tensor:
    """``torch._utils._rebuild_tensor_v2`` on a storage read here: a view of
    ``storage`` (out-of-bounds views are refused by ``as_strided``)."""
    if not (isinstance(storage, Tensor) and isinstance(offset, int)
            and isinstance(size, tuple) and isinstance(stride, tuple)
            and all(isinstance(n, int) for n in size + stride)
            and len(size) == len(stride)):
        raise _Refusal('malformed tensor record')
    return storage.as_strided(size, stride, offset)


def _module_state(root: Any) -> dict[str, Tensor]:
    """``state_dict()`` of a record tree, as a ScriptModule gives it: each
    module's parameters, then its buffers, then its submodules' state."""
    state: dict[str, Tensor] = {}

    def visit(record: _ModuleRecord, prefix: str,
              path: tuple[int, ...]) -> None:
        if id(record) in path:
            raise _Refusal(f'module {prefix!r} contains itself')
        if not hasattr(record, 'attributes'):
            raise _Refusal(f'module {prefix!r} has no attributes')
        cls, attributes = record.script_class, record.attributes
        missing = (cls.parameters | cls.buffers) - set(attributes)
        if missing:
            raise _Refusal(
                f'module {prefix!r} lacks its state {sorted(missing)}')
        for kind in (cls.parameters, cls.buffers):
            for name, value in attributes.items():
                if name not in kind or value is None:
                    continue
                if not isinstance(value, Tensor):
                    raise _Refusal(
                        f'{prefix}{name} is a {type(value).__name__}, not a '
                        'tensor')
                state[prefix + name] = value
        for name, value in attributes.items():
            if isinstance(value, _ModuleRecord):
                visit(value, f'{prefix}{name}.', path + (id(record), ))

    if not isinstance(root, _ModuleRecord):
        raise _Refusal(
            f'data.pkl holds a {type(root).__name__}, not a module')
    visit(root, '', ())
    return state


def read_torchscript_state_dict(path: str) -> dict[str, Tensor]:
    """``torch.jit.load(path).state_dict()``, read without running the
    archive's code (same keys, order, dtypes and values).

    Raises:
        ValueError: ``path`` is not a TorchScript archive, or its state can
            only be rebuilt by running code (a ``__setstate__``, a class not
            defined as a module in the archive, any global beyond tensors and
            containers); the message names the file and the reason.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            folder = _archive_folder(archive)
            if folder is None:
                raise _Refusal('no constants.pkl: not written by '
                                         'torch.jit.save')
            order = f'{folder}/byteorder'
            if order in archive.namelist() and \
                    archive.read(order).decode() != sys.byteorder:
                raise _Refusal(
                    f'its tensors are {archive.read(order).decode()}-endian')
            return _module_state(_ArchiveUnpickler(archive, folder).load())
    except _Refusal as err:
        raise ValueError(
            f'{path} cannot be read as a TorchScript archive without running '
            f'its code: {err}') from err
    except (zipfile.BadZipFile, KeyError, pickle.UnpicklingError,
            RuntimeError, TypeError, EOFError, AttributeError,
            IndexError) as err:
        raise ValueError(f'{path} is not a readable TorchScript archive: '
                         f'{type(err).__name__}: {err}') from err
