"""Fixtures shared by test folders: a free TCP port for distributed runs,
workspaces holding the tools tests' small synthetic dataset, and the
command-line tools imported as modules.

Also puts ``tests/`` on ``sys.path`` (first), so that test modules and the
worker processes they spawn import :mod:`helpers` by name.
"""
import importlib.util
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import helpers  # noqa: E402  (needs the line above)


@pytest.fixture(scope='session')
def free_port() -> Callable[[], int]:
    """``free_port() -> int``: a TCP port nobody listens on just now."""
    return helpers.free_port


@pytest.fixture(scope='session')
def synthetic_data(tmp_path_factory) -> Path:
    """The synthetic dataset the tools tests run on, generated once: 1 clip
    per combination (90 train, 90 test, 2 captions each), 2 s at 32 px."""
    from mmclip4clip.datasets.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp('synthetic_data') / 'synthetic'
    make_synthetic_dataset(out, seed=1, train_per_combo=1, test_per_combo=1,
                           seconds=2, size=32, progress=False)
    return out


@pytest.fixture(scope='session')
def make_workspace(tmp_path_factory,
                   synthetic_data) -> Callable[[str], Path]:
    """``make_workspace(name) -> Path``: a new folder holding its own copy
    of :func:`synthetic_data` at ``data/synthetic``, where the synthetic
    configs expect it (the tools run in it)."""

    def make(name: str) -> Path:
        root = tmp_path_factory.mktemp(name)
        shutil.copytree(synthetic_data, root / 'data' / 'synthetic')
        return root

    return make


@pytest.fixture(scope='session')
def load_tool() -> Callable[[str], ModuleType]:
    """``load_tool('tools/train.py') -> module``: a command-line tool of the
    repository imported (not run), to call its functions in-process."""

    def load(path: str) -> ModuleType:
        name = Path(path).stem + '_tool'
        spec = importlib.util.spec_from_file_location(name, REPO / path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
