"""``--cfg-options`` is checked against what each component accepts before
anything is built (mmclip4clip.engine.cfg_options).

Each refused case used to be accepted: a misspelt ``CheckpointHook``
argument crashed at the first save, a misspelt ``transformers`` config key
was ignored, wrong value types failed deep inside torch and
``max_epochs=-1`` trained nothing with exit 0.
"""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

import mmclip4clip  # noqa: F401  (registers every component)
from mmclip4clip.engine.cfg_options import accepted_arguments
from mmclip4clip.engine.config_utils import (
    ConfigOptionError,
    merge_cfg_options,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / 'configs/retrieval/clip4clip'
TINY = CONFIG_DIR / ('clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_'
                     'synthetic-rgb.py')
# A leaf with real CLIP weights: no ``config`` dict in its backbone.
MSRVTT = CONFIG_DIR / ('clip4clip-seqTransf_vit-base-p32-res224-clip-pre_'
                       '8xb16-u12-5e_msrvtt-9k-rgb.py')


@pytest.fixture(scope='module')
def parsed() -> dict:
    return {path: Config.fromfile(str(path)) for path in (TINY, MSRVTT)}


def merged(parsed, options: dict, path=TINY) -> Config:
    cfg = copy.deepcopy(parsed[path])
    merge_cfg_options(cfg, options)
    return cfg


def refused(parsed, options: dict, path=TINY) -> str:
    with pytest.raises(ConfigOptionError) as info:
        merged(parsed, options, path)
    return str(info.value)


def test_misspelt_kwargs_only_argument_is_refused(parsed):
    # CheckpointHook takes **kwargs: mmengine accepted this and crashed at
    # the first save, after a whole epoch.
    message = refused(parsed, {'default_hooks.checkpoint.intervall': 1})
    assert 'default_hooks.checkpoint.intervall' in message
    assert 'CheckpointHook' in message
    assert 'did you mean: interval' in message
    cfg = merged(parsed, {'default_hooks.checkpoint.interval': 1})
    assert cfg.default_hooks.checkpoint.interval == 1


@pytest.mark.parametrize('path', [TINY, MSRVTT], ids=['config', 'no-config'])
def test_misspelt_key_of_nested_transformers_config_is_refused(parsed, path):
    # CLIPBackbone's ``config`` goes to CLIPConfig, whose ``vision_config``
    # goes to CLIPVisionConfig; both accept any keyword silently.
    key = 'model.backbone.config.vision_config.num_hidden_layer'
    message = refused(parsed, {key: 1}, path)
    assert key in message
    assert 'CLIPVisionConfig' in message
    assert 'did you mean: num_hidden_layers' in message
    assert 'config.projection_dim' in refused(
        parsed, {'model.backbone.config.projection_dim': 'wide'}, path)


def test_valid_nested_key_is_merged(parsed):
    cfg = merged(parsed,
                 {'model.backbone.config.vision_config.num_hidden_layers': 1})
    assert cfg.model.backbone.config.vision_config.num_hidden_layers == 1


def test_component_declares_where_a_dict_argument_goes():
    from transformers import CLIPConfig, CLIPVisionConfig

    from mmclip4clip.models.backbones.clip import CLIPBackbone

    backbone = accepted_arguments(CLIPBackbone)
    assert backbone.arguments['config'].target is CLIPConfig
    clip = accepted_arguments(CLIPConfig)
    assert clip.arguments['vision_config'].target is CLIPVisionConfig


@pytest.mark.parametrize('key, value, wanted', [
    ('train_cfg.max_epochs', 'abc', 'expected int'),
    ('train_cfg.max_epochs', 2.5, 'expected int'),
    ('optim_wrapper.optimizer.lr', 'fast', 'expected float'),
    ('randomness.deterministic', 'yes', 'expected bool'),
    ('default_hooks.checkpoint.save_best', 3, 'expected None or list or str'),
    ('model.backbone.config.projection_dim', None, 'expected int'),
])
def test_value_of_another_type_is_refused(parsed, key, value, wanted):
    message = refused(parsed, {key: value})
    assert key in message
    assert wanted in message


def test_int_for_float_none_where_allowed_and_new_typed_key(parsed):
    cfg = merged(parsed, {'optim_wrapper.optimizer.lr': 1,
                          'load_from': None,
                          'default_hooks.checkpoint.save_best': None,
                          'test_dataloader.dataset.indices': 10,
                          'env_cfg.dist_cfg.timeout': 60})
    assert cfg.optim_wrapper.optimizer.lr == 1
    assert cfg.test_dataloader.dataset.indices == 10


@pytest.mark.parametrize('key, value', [
    ('train_cfg.max_epochs', -1), ('train_cfg.max_epochs', 0),
    ('train_cfg.val_interval', 0), ('train_dataloader.batch_size', 0),
    ('val_dataloader.num_workers', -1), ('env_cfg.dist_cfg.timeout', 0),
])
def test_out_of_range_setting_is_refused(parsed, key, value):
    assert key in refused(parsed, {key: value})


@pytest.mark.parametrize('key, named', [
    ('max_epochs', 'variable of the config file'),
    ('train_cfg.max_epoch', 'did you mean: max_epochs'),
    ('param_scheduler.0.ends', 'did you mean: end'),
    ('custom_hooks.5.priority', 'not an index'),
    ('model.head.type', "did you mean: SeqTransfHead"),
])
def test_unknown_keys_are_named_with_close_matches(parsed, key, named):
    value = 'SeqTrnsf' if key.endswith('type') else 1
    message = refused(parsed, {key: value})
    assert key in message
    assert named in message


def test_options_checked_against_the_type_they_set(parsed):
    # The new type's arguments are accepted in the same --cfg-options.
    cfg = merged(parsed, {'model.head.type': 'SeqTransfHead',
                          'model.head.num_layers': 1})
    assert cfg.model.head.num_layers == 1
    assert 'num_layers' in refused(parsed, {'model.head.num_layers': 1})


def test_train_tool_refuses_before_training(tmp_path):
    work_dir = tmp_path / 'work'
    proc = subprocess.run(
        [sys.executable, str(REPO / 'tools/train.py'), str(TINY),
         '--work-dir', str(work_dir), '--cfg-options',
         'default_hooks.checkpoint.intervall=1'],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert 'default_hooks.checkpoint.intervall' in proc.stderr
    assert 'did you mean: interval' in proc.stderr
    # Nothing ran: the Runner was never made (it creates the work dir) and
    # the data (absent from tmp_path) was never opened.
    assert not work_dir.exists()
    assert 'Traceback' not in proc.stderr


def test_amp_wrapper_options_are_accepted_with_amp(tmp_path, monkeypatch,
                                                   load_tool):
    # --amp switches the optimiser wrapper before the options are checked, so
    # the mixed-precision wrapper's own arguments are known; the run then
    # stops at the next (deliberately bad) option, before training. The
    # tool's main() in-process: the test above runs it as a user does.
    train = load_tool('tools/train.py')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setattr(sys, 'argv', [
        'train.py', str(TINY), '--amp', '--work-dir', str(tmp_path / 'work'),
        '--cfg-options', 'optim_wrapper.loss_scale=512',
        'train_cfg.max_epochs=0'])
    with pytest.raises(SystemExit) as info:
        train.main()
    message = str(info.value.code)
    assert 'loss_scale' not in message
    assert 'train_cfg.max_epochs must be a positive integer' in message
    assert not (tmp_path / 'work').exists()


def tokenizers(cfg: Config) -> set:
    return {step.tokenizer for loader in ('train_dataloader', 'val_dataloader',
                                          'test_dataloader')
            for step in cfg[loader].dataset.pipeline
            if step.type == 'TokenizeCaptions'}


def test_tokenizer_follows_the_weights_given_on_the_command_line(parsed):
    # The configs tokenize with the tokenizer saved beside the CLIP weights;
    # pointing the weights at a local copy moves the tokenizer with them.
    cfg = merged(parsed, {'model.backbone.pretrained': '/data/my-clip'},
                 MSRVTT)
    assert tokenizers(cfg) == {'/data/my-clip'}
    # An explicit tokenizer wins.
    cfg = merged(parsed, {
        'model.backbone.pretrained': '/data/my-clip',
        'val_dataloader.dataset.pipeline.4.tokenizer': '/data/tok'}, MSRVTT)
    assert tokenizers(cfg) == {'/data/tok', 'openai/clip-vit-base-patch32'}
    # A tokenizer of its own (the synthetic one) is left alone.
    cfg = merged(parsed, {'model.backbone.config.projection_dim': 32})
    assert tokenizers(cfg) == {'data/synthetic/tokenizer'}
