"""Every shipped config parses, and its model builds (a tiny CLIP standing in
for the real weights, which tests may not download)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_clip_dir
from mmengine.config import Config
from mmengine.registry import DefaultScope

import mmclip4clip  # noqa: F401
from mmclip4clip.registry import MODELS

CONFIG_DIR = Path(__file__).resolve().parents[2] / 'configs/retrieval/clip4clip'
CONFIGS = sorted(CONFIG_DIR.glob('*.py'))

# Real CLIP's text tower shapes at a tiny depth, so heads of width 512 build
# and can start from it.
STAND_IN_512 = dict(
    projection_dim=512,
    text_config=dict(vocab_size=64, hidden_size=512, intermediate_size=2048,
                     num_hidden_layers=4, num_attention_heads=8,
                     max_position_embeddings=77),
    vision_config=dict(image_size=32, patch_size=16, hidden_size=64,
                       intermediate_size=128, num_hidden_layers=1,
                       num_attention_heads=1))


def test_there_is_a_meanp_and_seqtransf_config_per_dataset():
    names = {p.name for p in CONFIGS}
    for dataset, sched in (('msvd', '8xb16-u12'), ('lsmdc', '8xb16-u12'),
                           ('activitynet', '8xb8-u64'), ('didemo', '8xb8-u64')):
        for head in ('', '-seqTransf'):
            assert (f'clip4clip{head}_vit-base-p32-res224-clip-pre_{sched}-5e_'
                    f'{dataset}-rgb.py') in names


def test_there_is_a_msrvtt_config_per_head_patch_and_arch():
    names = {p.name for p in CONFIGS}
    for head in ('', '-seqLSTM', '-seqTransf', '-tightTransf'):
        for patch in ('', '-3d'):
            for arch in ('p32', 'p16'):
                assert (f'clip4clip{head}{patch}_vit-base-{arch}-res224-clip-pre'
                        '_8xb16-u12-5e_msrvtt-9k-rgb.py') in names


# Configs for fewer GPUs inherit a leaf (``_base_ = ['./LEAF.py']``) and
# change only the batch per GPU, micro_batch_size and with_cp.
LEAF_BASE = re.compile(r"^_base_ = \['\./([^']+)'\]$", re.M)
FEW_GPU_CONFIGS = [p for p in CONFIGS if LEAF_BASE.search(p.read_text())]
GPUS_X_BATCH = re.compile(r'_(\d+)xb(\d+)-')


def test_there_are_few_gpu_configs_with_the_papers_batch():
    names = {p.name for p in FEW_GPU_CONFIGS}
    for head in ('', '-seqTransf'):
        for sched, dataset in (('1xb128-u12', 'msrvtt-9k'),
                               ('2xb64-u12', 'msrvtt-9k'),
                               ('1xb64-u64', 'activitynet')):
            assert (f'clip4clip{head}_vit-base-p32-res224-clip-pre_{sched}-5e_'
                    f'{dataset}-rgb.py') in names


@pytest.mark.parametrize('path', FEW_GPU_CONFIGS, ids=lambda p: p.stem)
def test_few_gpu_config_keeps_its_parents_global_batch_and_recipe(path):
    parent_path = CONFIG_DIR / LEAF_BASE.search(path.read_text()).group(1)
    cfg, parent = Config.fromfile(str(path)), Config.fromfile(str(parent_path))
    gpus, batch = map(int, GPUS_X_BATCH.search(path.name).groups())
    parent_gpus, parent_batch = map(int, GPUS_X_BATCH.search(
        parent_path.name).groups())
    assert cfg.train_dataloader.batch_size == batch
    assert parent.train_dataloader.batch_size == parent_batch
    # The paper's global batch, which the learning rates are set for.
    assert gpus * batch == parent_gpus * parent_batch == (
        cfg.auto_scale_lr.base_batch_size)
    assert 1 <= cfg.model.micro_batch_size < batch
    for key in ('optim_wrapper', 'param_scheduler', 'train_cfg',
                'auto_scale_lr', 'test_dataloader', 'val_evaluator'):
        assert cfg[key] == parent[key], key
    # The model differs in micro_batch_size and with_cp alone.
    model, parent_model = cfg.model.to_dict(), parent.model.to_dict()
    model.pop('micro_batch_size')
    for part in ('backbone', 'head'):
        model[part].pop('with_cp', None)
    assert model == parent_model
    dataset = cfg.train_dataloader.to_dict()
    dataset.pop('batch_size')
    assert dataset == {k: v for k, v in parent.train_dataloader.items()
                       if k != 'batch_size'}


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_its_model_builds(path):
    cfg = Config.fromfile(str(path))
    for key in ('model', 'train_dataloader', 'test_dataloader',
                'optim_wrapper', 'test_evaluator'):
        assert key in cfg, key
    model_cfg = cfg.model.to_dict()
    backbone = model_cfg['backbone']
    if 'pretrained' in backbone:
        # The real hub ids name the weights these configs are meant for.
        assert backbone.pop('pretrained').startswith(
            ('openai/clip-vit-base', 'Searchium-ai/clip4clip-webvid150k'))
        backbone['config'] = STAND_IN_512
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        model = MODELS.build(model_cfg)
    if '-u64-' in path.name:  # the paragraph datasets
        pipeline = cfg.test_dataloader.dataset.pipeline
        kinds = {t.type: t for t in pipeline}
        assert kinds['SampleFramesByRate'].max_frames == 64
        assert kinds['TokenizeCaptions'].max_words == 64
    if 'msrvtt' in path.name:
        assert cfg.optim_wrapper.paramwise_cfg.coef_lr == 1e-3
        assert cfg.optim_wrapper.optimizer.lr == 1e-4
        pipeline = cfg.train_dataloader.dataset.pipeline
        sampler = next(t for t in pipeline if t.type == 'SampleFramesByRate')
        assert sampler.max_frames == 12
        assert model.backbone.linear_patch == ('3d' if '-3d' in path.name
                                               else '2d')


# Every config that starts from real CLIP weights.
PRETRAINED_CONFIGS = [p for p in CONFIGS if '-clip-pre_' in p.name]
CLIP_PRETRAINED_LINE = re.compile(r"^clip_pretrained = '[^']*'$", re.M)

# Run offline in a fresh process (huggingface_hub reads HF_HUB_OFFLINE when
# imported): every config builds its model and each TokenizeCaptions
# transform, which tokenizes a caption.
OFFLINE_BUILD = '''
import json, sys
from mmengine.config import Config
from mmengine.registry import DefaultScope
import mmclip4clip
from mmclip4clip.registry import MODELS, TRANSFORMS

report = {}
for path in sys.argv[2:]:
    try:
        cfg = Config.fromfile(path)
        with DefaultScope.overwrite_default_scope('mmclip4clip'):
            MODELS.build(cfg.model)
            tokenizers = []
            for loader in ('train_dataloader', 'val_dataloader',
                           'test_dataloader'):
                for step in cfg[loader].dataset.pipeline:
                    if step.type == 'TokenizeCaptions':
                        TRANSFORMS.build(step)(dict(captions=['a red circle']))
                        tokenizers.append(step.tokenizer)
        report[path] = dict(pretrained=cfg.model.backbone.pretrained,
                            tokenizers=tokenizers)
    except Exception as err:
        report[path] = dict(error=f'{type(err).__name__}: {err}')
with open(sys.argv[1], 'w') as f:
    json.dump(report, f)
'''


@pytest.fixture(scope='module')
def local_clip(tmp_path_factory) -> Path:
    """A Hugging Face directory with random CLIP weights (the 512-wide
    stand-in) and a tiny tokenizer, as a user's local copy would hold."""
    from mmclip4clip.datasets.synthetic import build_tokenizer

    out = write_clip_dir(tmp_path_factory.mktemp('weights') / 'my-clip',
                         STAND_IN_512)
    build_tokenizer(['a red circle moves left'], out)
    return out


def test_one_variable_points_weights_and_tokenizer_at_a_local_copy(
        local_clip, tmp_path):
    # The user's edit: the one ``clip_pretrained`` line of each config.
    # A config inheriting a leaf takes the leaf's (both copied side by side).
    copies = []
    for path in PRETRAINED_CONFIGS:
        text = path.read_text()
        lines = 0 if path in FEW_GPU_CONFIGS else 1
        assert len(CLIP_PRETRAINED_LINE.findall(text)) == lines, path.name
        text = CLIP_PRETRAINED_LINE.sub(
            f'clip_pretrained = {str(local_clip)!r}', text)
        text = text.replace("'_base_/", repr(f'{CONFIG_DIR}/_base_/')[:-1])
        copy = tmp_path / path.name
        copy.write_text(text)
        copies.append(copy)
    report_file = tmp_path / 'report.json'
    env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1',
               HF_HOME=str(tmp_path / 'empty_hf_home'))
    proc = subprocess.run(
        [sys.executable, '-c', OFFLINE_BUILD, str(report_file),
         *map(str, copies)], env=env, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert len(report) == len(PRETRAINED_CONFIGS) > 20
    for path, result in report.items():
        assert 'error' not in result, (Path(path).name, result)
        assert result['pretrained'] == str(local_clip), path
        assert result['tokenizers'] == [str(local_clip)] * 3, path
