"""Read checkpoint files safely and put their weights into a model.

Everything mmclip4clip loads goes through here: its Runner (train, resume,
test), :func:`mmclip4clip.apis.init_retriever` and the checkpoint
converter. Nothing is registered with mmengine or torch globally: importing
the package leaves mmengine's own loader (and so mmaction2's checkpoints in
the same process) exactly as it is.

- :func:`load_checkpoint_file` reads a local file with torch's safe
  unpickler (``weights_only=True``), allowing numpy scalars and arrays for
  the duration of the call only. A file it cannot read is described for what
  it is (empty, truncated, not a torch file); only a pickled object outside
  the allow-list gets the "could execute code" refusal. Setting torch's own
  opt-out, ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, is honoured with a
  warning, as torch itself does for callers that do not insist.
- :func:`compare_weights` is the one key comparison between a checkpoint and
  a model; :func:`load_weights` uses it to refuse (evaluation, resume) or
  report (fine-tuning from ``load_from``) weights that do not fit.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

try:  # numpy >= 2
    from numpy._core import multiarray as np_multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as np_multiarray

# torch's switch for "load with full unpickling"; see torch.load.
FORCE_UNSAFE_ENV = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'
# mmengine's Runner prefix stripping (DataParallel / DDP saves).
DEFAULT_REVISE_KEYS = ((r'^module\.', ''), )


class CheckpointFileError(ValueError):
    """A checkpoint file that is not a readable torch checkpoint."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holding a pickled object outside the allow-list."""


class CheckpointMismatchError(ValueError):
    """A checkpoint whose weights do not fit the model."""


def checkpoint_safe_types() -> list:
    """The non-tensor types mmengine writes into a training checkpoint:
    numpy scalars and arrays in the message hub's runtime information.

    mmengine's ``HistoryBuffer`` cannot be allow-listed (it pickles
    ``getattr`` references); :class:`SafeCheckpointHook` stores it as
    tensors instead.
    """
    numpy_dtypes = [type(np.dtype(name)) for name in (
        'float64', 'float32', 'float16', 'int64', 'int32', 'int16', 'int8',
        'uint8', 'bool')]
    return [
        np_multiarray._reconstruct,
        np_multiarray.scalar,
        np.ndarray,
        np.dtype,
        *numpy_dtypes,
    ]


@contextlib.contextmanager
def _numpy_allowed() -> Iterator[None]:
    """Allow :func:`checkpoint_safe_types` in torch's safe unpickler for the
    block only; types someone else allowed before stay allowed after."""
    already = set(torch.serialization.get_safe_globals())
    extra = [t for t in checkpoint_safe_types() if t not in already]
    with torch.serialization.safe_globals(extra):
        yield


def _unsafe_load_forced() -> bool:
    return os.environ.get(FORCE_UNSAFE_ENV, '0').lower() in (
        '1', 'y', 'yes', 'true')


def _foreign_globals(path: str, err: BaseException) -> list[str]:
    """The pickled globals outside the allow-list that made torch's safe
    unpickler refuse ``path``; [] when it failed for another reason (a
    corrupt or non-torch file).

    Read off the archive's pickle without running it (zip checkpoints), or
    off torch's message (legacy files; torch words it "Unsupported global:
    GLOBAL x" or "unsupported GLOBAL x whose module is blocked").
    """
    if not isinstance(err, pickle.UnpicklingError):
        return []
    try:
        with _numpy_allowed():
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a complete zip checkpoint
        found = []
    return found or sorted(set(re.findall(r'GLOBAL ([\w.]+)', str(err))))


def _as_text(head: bytes) -> str | None:
    """``head`` decoded if it reads as UTF-8 text (a multi-byte character
    cut at the end is allowed), else None."""
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:
            return None
        text = head[:err.start].decode('utf-8')
    return text if all(c.isprintable() or c.isspace() for c in text) \
        else None


def _describe_unreadable(path: str, err: BaseException) -> str:
    """What a file torch could not read is, judged by its bytes."""
    size = os.path.getsize(path)
    if size == 0:
        return 'is an empty file (0 bytes); was it written completely?'
    with open(path, 'rb') as f:
        head = f.read(64)
    reason = str(err).strip().splitlines()[0] if str(err).strip() \
        else type(err).__name__
    if head.startswith(b'PK\x03\x04'):
        if not zipfile.is_zipfile(path):
            return (f'is a truncated or corrupt zip archive ({size} bytes, '
                    'no end-of-archive record); a full disk or a killed '
                    'save cuts files short like this')
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if not any(n.endswith('data.pkl') for n in names):
            return ('is a zip archive but not a torch checkpoint (it holds '
                    f'no data.pkl; {len(names)} entries)')
        return f'is a corrupt torch checkpoint archive ({reason})'
    if head.startswith(b'\x80'):  # torch's legacy (pre-zip) pickle format
        return (f'is a truncated or corrupt legacy torch checkpoint '
                f'({size} bytes; {reason})')
    text = _as_text(head)
    if text is not None:
        return ('is not a torch checkpoint at all: it is text, beginning '
                f'{text[:40]!r}')
    return ('is not a torch checkpoint at all (it starts with bytes '
            f'{head[:8]!r}, neither a zip archive nor a pickle)')


def load_checkpoint_file(path: str | os.PathLike, map_location=None,
                         allow_pickle: bool = False, mmap: bool = False):
    """``torch.load`` a local checkpoint in safe mode, with errors that say
    what is wrong with the file and name it.

    Args:
        path: the checkpoint file.
        map_location: as for :func:`torch.load`.
        allow_pickle: unpickle any object (the caller was told, e.g. by a
            ``--allow-pickle`` flag, that the file is trusted). Otherwise
            only tensors, containers, plain values and numpy scalars and
            arrays load, unless ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set.
        mmap: map the tensors' bytes instead of reading them (zip files
            only), for callers that read a few entries of a large file.

    Raises:
        FileNotFoundError: no such file.
        CheckpointFileError: empty, truncated or not a torch checkpoint.
        UnsafeCheckpointError: holds a pickled object outside the
            allow-list (unpickling it could execute code).
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    weights_only = not allow_pickle
    if weights_only and _unsafe_load_forced():
        warnings.warn(f'{FORCE_UNSAFE_ENV} is set: loading {path} with full '
                      'unpickling, which runs any code the file holds',
                      stacklevel=2)
        weights_only = False
    try:
        with _numpy_allowed():
            return torch.load(path, map_location=map_location,
                              weights_only=weights_only, mmap=mmap)
    except OSError:
        raise
    except Exception as err:
        foreign = _foreign_globals(path, err) if weights_only else []
        if foreign:
            raise UnsafeCheckpointError(
                f'checkpoint {path} was refused: it holds pickled objects '
                'outside the allow-listed types (tensors, containers, numpy '
                'scalars and arrays), and unpickling it could execute code. '
                'Load only checkpoints you trust, and re-save them as plain '
                f'tensors (refused: {", ".join(foreign)})') from err
        raise CheckpointFileError(
            f'checkpoint {path} {_describe_unreadable(path, err)}') from err


def state_dict_of(checkpoint, source: str,
                  revise_keys: Iterable[tuple[str, str]] = DEFAULT_REVISE_KEYS
                  ) -> dict[str, Tensor]:
    """The model weights of a loaded checkpoint: its ``state_dict`` entry
    (mmengine checkpoints) or the mapping itself (plain state dicts), keys
    rewritten by ``revise_keys`` (pattern, replacement) as mmengine does."""
    weights = checkpoint.get('state_dict', checkpoint) \
        if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(weights, Mapping):
        raise CheckpointFileError(
            f'checkpoint {source} holds a {type(weights).__name__}, not a '
            'state dict')
    not_tensors = sorted(k for k, v in weights.items()
                         if not isinstance(v, Tensor))
    if not_tensors:
        raise CheckpointFileError(
            f'checkpoint {source}: its state dict holds non-tensor entries '
            f'{not_tensors[:5]}')
    out = {}
    for key, value in weights.items():
        for pattern, replacement in revise_keys:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def group_keys(keys: Iterable[str]) -> str:
    """Weight names in a compact form: one entry per top-level module, as
    the deepest module prefix its keys share, e.g.
    ``head.*: 25 tensors, backbone.conv2.weight``."""
    groups: dict[str, list[list[str]]] = {}
    for key in sorted(keys):
        parts = key.split('.')
        groups.setdefault(parts[0], []).append(parts)
    entries = []
    for members in groups.values():
        if len(members) == 1:
            entries.append('.'.join(members[0]))
            continue
        shared = []
        for level in zip(*(m[:-1] for m in members)):
            if len(set(level)) > 1:
                break
            shared.append(level[0])
        entries.append(f'{".".join(shared)}.*: {len(members)} tensors')
    return ', '.join(entries)


@dataclass
class WeightMismatch:
    """How a checkpoint's weights differ from a model's.

    ``missing``: the model's, absent from the checkpoint (they would keep
    their initialisation); ``unexpected``: the checkpoint's, which the model
    has no place for; ``wrong_shape``: key -> (checkpoint shape, model
    shape).
    """
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: dict[str, tuple[tuple, tuple]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)

    def describe(self) -> str:
        """One line per kind of difference."""
        lines = []
        if self.missing:
            lines.append('missing from the checkpoint (the model would keep '
                         f'its initial values): {group_keys(self.missing)}')
        if self.unexpected:
            lines.append('in the checkpoint but not in the model: '
                         f'{group_keys(self.unexpected)}')
        if self.wrong_shape:
            shapes = ', '.join(
                f'{k} (checkpoint {list(c)}, model {list(m)})'
                for k, (c, m) in sorted(self.wrong_shape.items())[:5])
            more = len(self.wrong_shape) - 5
            lines.append(f'of another shape: {shapes}'
                         + (f' and {more} more' if more > 0 else ''))
        return '\n'.join(lines)


def compare_weights(model_weights: Mapping[str, Tensor],
                    checkpoint_weights: Mapping[str, Tensor]
                    ) -> WeightMismatch:
    """The differences between a model's ``state_dict()`` and a
    checkpoint's weights (already revised, see :func:`state_dict_of`)."""
    mismatch = WeightMismatch(
        missing=sorted(set(model_weights) - set(checkpoint_weights)),
        unexpected=sorted(set(checkpoint_weights) - set(model_weights)))
    for key in model_weights.keys() & checkpoint_weights.keys():
        want, got = model_weights[key].shape, checkpoint_weights[key].shape
        if want != got:
            mismatch.wrong_shape[key] = (tuple(got), tuple(want))
    return mismatch


def load_weights(model: nn.Module, weights: Mapping[str, Tensor],
                 source: str, strict: bool = True) -> WeightMismatch:
    """Copy ``weights`` into ``model`` after comparing them.

    ``strict``: any difference is a :class:`CheckpointMismatchError` and
    nothing is copied (evaluating or resuming another model gives wrong
    numbers). Otherwise the fitting weights are copied and the differences
    returned for the caller to report (fine-tuning into a new head).
    """
    mismatch = compare_weights(model.state_dict(), weights)
    if mismatch and strict:
        raise CheckpointMismatchError(
            f'checkpoint {source} does not fit the model:\n'
            f'{mismatch.describe()}\nUse the config the checkpoint was '
            'trained with (or load it with `load_from` to fine-tune).')
    fitting = {k: v for k, v in weights.items()
               if k not in mismatch.wrong_shape}
    model.load_state_dict(fitting, strict=False)
    return mismatch
