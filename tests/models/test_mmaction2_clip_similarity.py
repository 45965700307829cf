"""Our loose heads inside mmaction2 1.2.0's own CLIPSimilarity (from its
sdist), trained in its loss mode and evaluated with its RetrievalMetric and
ours; its real TransformerAdapter through our converter.

The work runs in a subprocess (``mmaction2_clip_similarity_check.py``): it
replaces ``mmaction.models`` and ``clip`` in ``sys.modules`` and registers
mmaction2's models, none of which may leak into this process.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mmaction2_sdist import SdistError, mmaction2_source

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name('mmaction2_clip_similarity_check.py')
NAMES = ('R1', 'R5', 'R10', 'MdR', 'MnR')


@pytest.fixture(scope='session')
def mmaction2_sdist_source() -> Path:
    """The extracted mmaction2 1.2.0 sdist; not obtaining it is a failure."""
    try:
        return mmaction2_source()
    except SdistError as err:
        pytest.fail(f'mmaction2 1.2.0 sdist unavailable: {err}')


@pytest.fixture(scope='module')
def report(mmaction2_sdist_source, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp('mmaction2_check') / 'report.json'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get('PYTHONPATH')])))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(mmaction2_sdist_source), str(out)],
        capture_output=True, text=True, timeout=300, env=env,
        cwd=out.parent)
    assert proc.returncode == 0, (
        f'{SCRIPT.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
    return json.loads(out.read_text())


def test_the_sdist_models_and_the_clip_stand_in_are_used(
        report, mmaction2_sdist_source):
    expected = mmaction2_sdist_source / 'mmaction/models/similarity'
    assert Path(report['similarity_file']).parent == expected
    assert report['stand_in_rel_err'] < 1e-5  # == OpenAI's CLIP reference
    assert report['clip_archs_loaded'] == ['ViT-B/32'] * 4
    assert 'mmaction.models' not in sys.modules
    assert 'clip' not in sys.modules


@pytest.mark.parametrize('head', ['MeanPHead', 'SeqLSTMHead', 'SeqTransfHead'])
def test_our_head_trains_inside_clip_similarity(report, head):
    result = report['heads'][head]
    assert result['loss_keys'] == ['sim_loss_t2v', 'sim_loss_v2t']
    assert bool(result['head_params']) == (head != 'MeanPHead')
    assert result['head_params_without_grad'] == []
    assert sorted(result['head_params_changed']) == result['head_params']
    losses = result['losses']
    assert losses[-1] < losses[0], losses
    # mmaction2's _freeze_stages(frozen_layers=1) on the OpenAI layout:
    # block 0 and the embeddings frozen, block 1 and the top trained.
    grads = result['clip_params_with_grad']
    assert {'visual.proj', 'text_projection', 'ln_final.weight',
            'transformer.resblocks.1.attn.in_proj_weight'} <= set(grads)
    assert not any(name.startswith(('transformer.resblocks.0.',
                                    'visual.conv1', 'token_embedding'))
                   for name in grads)


@pytest.mark.parametrize('head', ['MeanPHead', 'SeqLSTMHead', 'SeqTransfHead'])
def test_mmaction2_metric_and_ours_agree_in_mmengine_val_loop(report, head):
    metrics = report['heads'][head]['metrics']
    for name in NAMES:
        assert metrics[f't2v/{name}'] == pytest.approx(
            metrics[f'retrieval/{name}']), name
    assert {f'v2t/{name}' for name in NAMES} <= set(metrics)


def test_mmaction2_transformer_adapter_converts_with_its_head_count(report):
    """4 heads (stored config) where width // 64 = 1: our converted model
    scores as mmaction2's model to 1e-5 of the score scale; with the
    guessed head count the scores are off by percents."""
    result = report['transformer_adapter']
    assert result['heads'] == 4
    assert result['max_rel_err'] < 1e-5
    assert result['guessed_heads_rel_diff'] > 0.01
    assert result['score_spread'] > 0.5  # scores not all alike


@pytest.mark.parametrize('content, match', [
    (None, 'is not a file'),
    (b'not the sdist', 'sha256 .* not the published'),
])
def test_a_wrong_sdist_is_an_error_naming_it(content, match, tmp_path,
                                             monkeypatch):
    archive = tmp_path / 'mmaction2-1.2.0.tar.gz'
    if content is not None:
        archive.write_bytes(content)
    monkeypatch.setenv('MMACTION2_SDIST', str(archive))
    with pytest.raises(SdistError, match=match):
        mmaction2_source()
