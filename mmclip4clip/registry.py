"""Registries of the ``mmclip4clip`` scope.

Each registry is a child of mmaction2's registry of the same kind, so a config
in the ``mmclip4clip`` scope finds our components first and falls back to
mmaction2's (e.g. ``DecordInit``) and then to mmengine's.

Why not register into mmaction2's registries directly: mmengine imports a
registry's ``locations`` whenever ``get`` is called on it, and mmaction2's
``MODELS`` points at ``mmaction.models``, which cannot be imported from the
PyPI wheel of mmaction2 1.2.0. A child registry only imports its own
locations, and looks its parents up without importing theirs.
"""
from mmaction import registry as mmaction_registry
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import Registry

SCOPE = 'mmclip4clip'


def _child(parent: Registry, name: str, locations: list[str]) -> Registry:
    return Registry(name, parent=parent, scope=SCOPE, locations=locations)


MODELS = _child(mmaction_registry.MODELS, 'model', ['mmclip4clip.models'])
DATASETS = _child(mmaction_registry.DATASETS, 'dataset',
                  ['mmclip4clip.datasets'])
TRANSFORMS = _child(mmaction_registry.TRANSFORMS, 'transform',
                    ['mmclip4clip.datasets.transforms'])
METRICS = _child(mmaction_registry.METRICS, 'metric',
                 ['mmclip4clip.evaluation'])
LOOPS = _child(mmaction_registry.LOOPS, 'loop', ['mmclip4clip.engine'])
HOOKS = _child(mmaction_registry.HOOKS, 'hook', ['mmclip4clip.engine'])
RUNNERS = _child(mmaction_registry.RUNNERS, 'runner', ['mmclip4clip.engine'])
# Registries with nothing of ours yet: children so that building their
# components in our scope finds mmengine's without a scope warning.
DATA_SAMPLERS = _child(mmaction_registry.DATA_SAMPLERS, 'data sampler', [])
MODEL_WRAPPERS = _child(mmaction_registry.MODEL_WRAPPERS, 'model_wrapper', [])
WEIGHT_INITIALIZERS = _child(mmaction_registry.WEIGHT_INITIALIZERS,
                             'weight initializer', [])
OPTIMIZERS = _child(mmaction_registry.OPTIMIZERS, 'optimizer', [])
OPTIM_WRAPPERS = _child(mmaction_registry.OPTIM_WRAPPERS, 'optim_wrapper', [])
OPTIM_WRAPPER_CONSTRUCTORS = _child(
    mmaction_registry.OPTIM_WRAPPER_CONSTRUCTORS,
    'optimizer wrapper constructor', [])
PARAM_SCHEDULERS = _child(mmaction_registry.PARAM_SCHEDULERS,
                          'parameter scheduler', [])
EVALUATOR = _child(mmaction_registry.EVALUATOR, 'evaluator', [])
VISUALIZERS = _child(mmaction_registry.VISUALIZERS, 'visualizer', [])
VISBACKENDS = _child(mmaction_registry.VISBACKENDS, 'vis_backend', [])
LOG_PROCESSORS = _child(mmaction_registry.LOG_PROCESSORS, 'log_processor', [])
# A child of mmengine's root: the Runner looks collate functions up in the
# root registry without switching scope, so configs name them with the
# scope prefix, e.g. ``collate_fn=dict(type='mmclip4clip.video_text_collate')``.
FUNCTIONS = _child(MMENGINE_FUNCTIONS, 'function', ['mmclip4clip.datasets'])
