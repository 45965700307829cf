"""Every shipped config parses, and its model builds (a tiny CLIP standing in
for the real weights, which tests may not download)."""
from pathlib import Path

import pytest
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
        assert backbone.pop('pretrained').startswith('openai/clip-vit-base')
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
