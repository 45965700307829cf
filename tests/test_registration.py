"""``import mmclip4clip`` registers every component of the package, and
leaves transformers' CLIP modules and tokenizers unimported (they load when a
CLIP or a tokenizer is built).

The components are read from the source (every ``@REGISTRY.register_module()``
decorator) and looked up in a fresh interpreter that imports only
``mmclip4clip``: configs are built through the registries, so a component
that registered only once its module happened to be imported would fail to
build in a tool that never imports that module.
"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'mmclip4clip'

# Modules that ``import mmclip4clip`` must not import: the heavy part of
# transformers, imported where a CLIP or a tokenizer is built.
LAZY_MODULES = ('transformers.models.clip.modeling_clip',
                'transformers.models.auto.tokenization_auto')

REGISTRY_DUMP = f"""
import json, sys
import mmclip4clip
from mmclip4clip import registry
from mmengine import registry as mmengine_registry
from mmengine.registry import Registry
print(json.dumps({{
    'registered': {{f'{{module.__name__}}.{{name}}': sorted(value.module_dict)
                   for module in (registry, mmengine_registry)
                   for name, value in vars(module).items()
                   if isinstance(value, Registry)}},
    'mmaction_found': [n for n in ('DecordInit', 'DecordDecode')
                       if registry.TRANSFORMS.get(n) is not None],
    'imported': [m for m in {LAZY_MODULES!r} if m in sys.modules]}}))
"""


def registered_in_source() -> dict[str, set[str]]:
    """``{registry: names of the classes and functions decorated with its
    register_module()}`` over the package's source; a registry is named by
    the module it is imported from (``mmclip4clip.registry.MODELS``,
    ``mmengine.registry.MODEL_WRAPPERS``)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob('*.py'):
        tree = ast.parse(path.read_text(encoding='utf-8'))
        origin = {alias.asname or alias.name: f'{node.module}.{alias.name}'
                  for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module
                  for alias in node.names}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                continue
            for decorator in node.decorator_list:
                if (isinstance(decorator, ast.Call)
                        and isinstance(decorator.func, ast.Attribute)
                        and decorator.func.attr == 'register_module'
                        and isinstance(decorator.func.value, ast.Name)):
                    assert not decorator.args and not decorator.keywords, (
                        f'{path}: {node.name} registers under another name; '
                        'teach registered_in_source to read it')
                    registry = origin[decorator.func.value.id]
                    found.setdefault(registry, set()).add(node.name)
    return found


def test_import_registers_every_component_and_no_transformers_clip():
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
        filter(None, [str(REPO), os.environ.get('PYTHONPATH')]))}
    out = subprocess.run([sys.executable, '-c', REGISTRY_DUMP], env=env,
                         capture_output=True, text=True, check=True).stdout
    dump = json.loads(out.strip().splitlines()[-1])
    expected = registered_in_source()
    # The components the configs and tools name, so that a source reader
    # that misses a decorator style cannot pass the test vacuously.
    ours = 'mmclip4clip.registry.'
    assert {'CLIP4Clip', 'CLIPBackbone', 'MeanPHead', 'SeqLSTMHead',
            'SeqTransfHead', 'TightTransfHead', 'SymmetricInfoNCELoss',
            'VideoTextDataPreprocessor', 'MMAction2MeanHead',
            'MMAction2TransformerHead'} <= expected[ours + 'MODELS']
    assert {'TokenizeCaptions', 'SampleFramesByRate', 'PackVideoTextInputs',
            'CLIPResizeCrop', 'AVInit',
            'AVDecode'} <= expected[ours + 'TRANSFORMS']
    assert expected[ours + 'DATASETS'] == {'VideoTextDataset'}
    assert expected[ours + 'METRICS'] == {'RetrievalMetric'}
    assert expected[ours + 'FUNCTIONS'] == {'video_text_collate'}
    assert expected['mmengine.registry.MODEL_WRAPPERS'] == {
        'CLIP4ClipDistributedDataParallel'}
    missing = {registry: sorted(names - set(dump['registered'][registry]))
               for registry, names in expected.items()}
    assert {k: v for k, v in missing.items() if v} == {}
    # mmaction2's transforms that our pipelines name are found through the
    # parent registry once mmclip4clip is imported.
    assert dump['mmaction_found'] == ['DecordInit', 'DecordDecode']
    assert dump['imported'] == []
