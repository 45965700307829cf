"""The package's import graph, read from the source with ``ast``: no cycle
(no module imports a module that imports it, directly or through others,
lazily inside a function included), and the library never imports the
repository's tools (``tools/`` holds the command lines and their helpers)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / 'mmclip4clip'


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``. ``from a import b``
    counts as importing ``a.b`` when that is a module, else ``a``; importing
    ``a.b`` is not counted as importing the package ``a`` (Python runs
    ``a/__init__`` first either way, so counting it would make every
    re-exporting package a cycle)."""
    modules = {module_name(p): p for p in PACKAGE.rglob('*.py')}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == '__init__.py' else name.rpartition('.')[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    anchor = package.split('.')
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = '.'.join(anchor + ([base] if base else []))
                for alias in node.names:
                    full = f'{base}.{alias.name}'
                    targets.add(full if full in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_of_the_package_imports_one_that_imports_it():
    assert cycles(import_graph()) == []


def test_the_library_never_imports_the_tools():
    offenders = []
    for path in PACKAGE.rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            names = ([a.name for a in node.names]
                     if isinstance(node, ast.Import) else
                     [node.module or ''] if isinstance(node, ast.ImportFrom)
                     and node.level == 0 else [])
            offenders += [f'{path.relative_to(PACKAGE.parent)}: {n}'
                          for n in names
                          if n.split('.')[0] in ('tools', 'benchmarks',
                                                 'reversal')]
    assert offenders == []


def test_the_graph_sees_relative_lazy_and_submodule_imports():
    """The checker itself: the edges it must see exist."""
    graph = import_graph()
    # A relative import of a sibling module.
    assert 'mmclip4clip.datasets.annotations' in graph[
        'mmclip4clip.datasets.check']
    # 'from . import x' (a submodule) and absolute package imports.
    assert 'mmclip4clip.registry' in graph[
        'mmclip4clip.datasets.video_text_dataset']
    assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [
        ['a', 'b', 'c']]
