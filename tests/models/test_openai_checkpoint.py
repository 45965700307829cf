"""OpenAI CLIP checkpoints -> Hugging Face CLIPModel, against a plain forward.

The checkpoints are written by the tests (random weights, OpenAI's exact
keys, saved as TorchScript like ``ViT-B-32.pt``); the converted model's
features must equal those of ``openai_reference``, which reads the OpenAI
layout directly.
"""
import inspect
import os
import pickle
import zipfile

import openai_reference as ref
import pytest
import torch
from torch import Tensor, nn
from transformers import CLIPModel

from mmclip4clip.models.checkpoints import (
    clip_from_openai,
    load_openai_state_dict,
    openai_clip_config,
    openai_to_hf,
)
from mmclip4clip.models.checkpoints.torchscript import (
    read_torchscript_state_dict,
)

TOL = dict(atol=1e-5, rtol=1e-5)

# The stand-in archives need torch.jit.script, deprecated in recent torch.
pytestmark = pytest.mark.filterwarnings(
    'ignore:`torch.jit.*deprecated:DeprecationWarning')

# Default tiny CLIP, and one whose towers differ in width (heads 3 vs 1),
# depth, patch, context length and vocabulary, so no shape is a coincidence.
SHAPES = {
    'tiny': dict(),
    'uneven': dict(width=192, layers=3, vision_width=64, vision_layers=2,
                   patch=5, image_size=20, context_length=12, vocab=50,
                   embed_dim=24, seed=1),
}


def clip_ids(num_words: list[int], seq_len: int, vocab: int,
             seed: int = 0) -> Tensor:
    """[N, seq_len] rows ``[vocab-2, words..., vocab-1, 0...]``."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(num_words), seq_len, dtype=torch.long)
    for i, k in enumerate(num_words):
        ids[i, 0] = vocab - 2
        ids[i, 1:k + 1] = torch.randint(1, vocab - 2, (k,), generator=gen)
        ids[i, k + 1] = vocab - 1
    return ids


@torch.no_grad()
def hf_text_features(model: CLIPModel, ids: Tensor) -> Tensor:
    """[N, L] -> [N, D]: final-norm state at ``argmax(ids)``, projected."""
    hidden = model.text_model(input_ids=ids).last_hidden_state  # [N, L, W]
    return model.text_projection(hidden[torch.arange(len(ids)),
                                        ids.argmax(dim=-1)])


@torch.no_grad()
def hf_image_features(model: CLIPModel, images: Tensor) -> Tensor:
    """[N, 3, S, S] -> [N, D]: projected pooled (post-LN class) state."""
    pooled = model.vision_model(pixel_values=images).pooler_output
    return model.visual_projection(pooled)


def text_inputs(sd: dict[str, Tensor]) -> Tensor:
    """Captions of several lengths, one filling the whole context."""
    vocab, context = (sd['token_embedding.weight'].shape[0],
                      sd['positional_embedding'].shape[0])
    return clip_ids([0, 3, 7, context - 2], context, vocab)


def image_inputs(sd: dict[str, Tensor], n: int = 3) -> Tensor:
    """[n, 3, S, S] random images of the checkpoint's input size."""
    rows = sd['visual.positional_embedding'].shape[0]
    patch = sd['visual.conv1.weight'].shape[-1]
    side = patch * round((rows - 1) ** 0.5)
    gen = torch.Generator().manual_seed(2)
    return torch.randn(n, 3, side, side, generator=gen)


def assert_distinct_rows(feats: Tensor) -> None:
    """The features are not degenerate: no two rows nearly parallel."""
    cos = torch.nn.functional.normalize(feats, dim=-1)
    cos = cos @ cos.t() - torch.eye(len(feats))
    assert cos.abs().max() < 0.95, cos


@pytest.fixture(scope='module', params=list(SHAPES))
def checkpoint(request, tmp_path_factory) -> dict:
    """A TorchScript stand-in of ``ViT-B-32.pt``, loaded and converted."""
    kwargs = SHAPES[request.param]
    sd = ref.make_openai_state_dict(**kwargs)
    path = str(tmp_path_factory.mktemp('openai') / 'ViT-test.pt')
    ref.save_openai_torchscript(sd, path)
    loaded = load_openai_state_dict(path)
    return dict(sd=sd, kwargs=kwargs, path=path, loaded=loaded,
                model=clip_from_openai(loaded))


def test_torchscript_archive_as_written(checkpoint):
    archive = torch.jit.load(checkpoint['path']).state_dict()
    # The stand-in holds the weights plus the archives' three metadata entries.
    assert set(archive) == set(checkpoint['sd']) | set(ref.METADATA_KEYS)
    loaded = checkpoint['loaded']
    assert set(loaded) == set(checkpoint['sd'])
    for key, value in checkpoint['sd'].items():
        assert loaded[key].dtype == torch.float32
        assert torch.equal(loaded[key], value), key


def assert_same_state(actual: dict[str, Tensor],
                      expected: dict[str, Tensor]) -> None:
    """Same keys in the same order, same dtypes and shapes, equal values."""
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key


def test_archive_read_as_data_equals_torch_jit_load(checkpoint, monkeypatch):
    """The archive's tensors come out of its pickle as torch.jit.load gives
    them, and loading an OpenAI archive does not call torch.jit.load."""
    expected = torch.jit.load(checkpoint['path']).state_dict()
    assert_same_state(read_torchscript_state_dict(checkpoint['path']),
                      expected)

    def no_jit(*args, **kwargs):
        raise AssertionError('torch.jit.load runs the archive\'s code')

    monkeypatch.setattr(torch.jit, 'load', no_jit)
    loaded = load_openai_state_dict(checkpoint['path'])
    assert set(loaded) == set(checkpoint['sd'])
    for key, value in checkpoint['sd'].items():
        assert torch.equal(loaded[key], value), key


def test_archive_whose_code_runs_at_load_is_refused(tmp_path):
    """ln_final's __setstate__ creates a file when torch.jit.load runs it:
    the safe reader refuses the archive, naming it, and nothing runs."""
    sd = ref.make_openai_state_dict(seed=6)
    marker = tmp_path / 'code_ran'
    path = tmp_path / 'ViT-loud.pt'
    ref.save_openai_torchscript(sd, str(path), load_marker=str(marker))
    with pytest.raises(ValueError, match=r'ViT-loud\.pt.*__setstate__'):
        load_openai_state_dict(str(path))
    assert not marker.exists()
    # Trusted, it is loaded as before, by torch.jit.load: the code runs.
    loaded = load_openai_state_dict(str(path), allow_pickle=True)
    assert marker.exists()
    assert set(loaded) == set(sd)
    for key, value in sd.items():
        assert torch.equal(loaded[key], value), key


def test_archive_of_another_model_is_refused(tmp_path):
    path = tmp_path / 'not_clip.pt'
    torch.jit.script(nn.Sequential(nn.Linear(3, 2))).save(str(path))
    with pytest.raises(ValueError, match=r"not_clip\.pt.*'0\.weight'"):
        load_openai_state_dict(str(path))
    assert set(load_openai_state_dict(str(path), allow_pickle=True)) == {
        '0.weight', '0.bias'}


class _MakeDirectory:
    """Unpickles as ``os.mkdir(path)``: a pickle that runs code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path, )


def test_archive_pickle_with_other_globals_is_refused(checkpoint, tmp_path):
    """An archive whose data.pkl calls a function outside the tensor and
    container globals is refused before anything is called."""
    marker = tmp_path / 'pickle_ran'
    payload = pickle.dumps(_MakeDirectory(str(marker)), protocol=2)
    path = tmp_path / 'forged.pt'
    with zipfile.ZipFile(checkpoint['path']) as src, \
            zipfile.ZipFile(path, 'w') as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith('/data.pkl'):
                data = payload
            dst.writestr(info.filename, data)
    for load in (read_torchscript_state_dict, load_openai_state_dict):
        with pytest.raises(ValueError, match=r'forged\.pt.*mkdir'):
            load(str(path))
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: plain unpickling runs it
    assert marker.is_dir()


def test_text_features_equal_reference(checkpoint):
    sd, model = checkpoint['sd'], checkpoint['model']
    ids = text_inputs(sd)
    expected = ref.encode_text(sd, ids)
    assert_distinct_rows(expected)
    torch.testing.assert_close(hf_text_features(model, ids), expected, **TOL)
    # Shorter padding changes nothing: the mask is causal.
    short = ids[:, :10]
    torch.testing.assert_close(hf_text_features(model, short[:3]),
                               expected[:3], **TOL)


def test_image_features_equal_reference(checkpoint):
    sd, model = checkpoint['sd'], checkpoint['model']
    images = image_inputs(sd)
    expected = ref.encode_image(sd, images)
    assert_distinct_rows(expected)
    torch.testing.assert_close(hf_image_features(model, images), expected,
                               **TOL)


def test_config_matches_shapes(checkpoint):
    params = inspect.signature(ref.make_openai_state_dict).parameters
    kw = {k: p.default for k, p in params.items()} | checkpoint['kwargs']
    config = checkpoint['model'].config
    text, vision = config.text_config, config.vision_config
    assert config.projection_dim == kw['embed_dim']
    assert text.hidden_size == kw['width']
    assert text.num_attention_heads == kw['width'] // 64
    assert text.num_hidden_layers == kw['layers']
    assert text.intermediate_size == 4 * kw['width']
    assert text.max_position_embeddings == kw['context_length']
    assert text.vocab_size == kw['vocab']
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (
        kw['vocab'] - 2, kw['vocab'] - 1, 0)
    assert vision.hidden_size == kw['vision_width']
    assert vision.num_attention_heads == kw['vision_width'] // 64
    assert vision.num_hidden_layers == kw['vision_layers']
    assert vision.intermediate_size == 4 * kw['vision_width']
    assert vision.image_size == kw['image_size']
    assert vision.patch_size == kw['patch']
    for tower in (text, vision):
        assert tower.hidden_act == 'quick_gelu'
        assert tower.layer_norm_eps == 1e-5
    assert config.logit_scale_init_value == pytest.approx(
        float(checkpoint['sd']['logit_scale']))
    assert checkpoint['model'].logit_scale.item() == pytest.approx(
        float(checkpoint['sd']['logit_scale']))
    assert all(p.dtype == torch.float32
               for p in checkpoint['model'].parameters())


def test_plain_state_dict_fallback(tmp_path):
    sd = ref.make_openai_state_dict(seed=3)
    for name, obj in [('plain.pth', sd), ('nested.pth', {'state_dict': sd})]:
        path = tmp_path / name
        torch.save(obj, path)
        loaded = load_openai_state_dict(str(path))
        assert set(loaded) == set(sd)
        assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    # Metadata entries are dropped from plain state dicts too.
    torch.save({**sd, 'context_length': torch.tensor(16)}, tmp_path / 'm.pth')
    assert set(load_openai_state_dict(str(tmp_path / 'm.pth'))) == set(sd)


def test_clip_prefix(checkpoint):
    sd = checkpoint['sd']
    # A CLIP4Clip-style checkpoint: CLIP behind "clip.", its own modules aside.
    prefixed = {'clip.' + k: v for k, v in sd.items()}
    prefixed['frame_position_embeddings.weight'] = torch.zeros(12, 8)
    prefixed['transformerClip.resblocks.0.attn.in_proj_weight'] = torch.zeros(
        3, 1)
    prefixed['clip.extra_head.weight'] = torch.zeros(2)
    assert openai_clip_config(prefixed, 'clip.') == openai_clip_config(sd)
    plain_hf = openai_to_hf(sd)
    prefixed_hf = openai_to_hf(prefixed, prefix='clip.')
    assert set(prefixed_hf) == set(plain_hf)
    assert all(torch.equal(prefixed_hf[k], v) for k, v in plain_hf.items())
    model = clip_from_openai(prefixed, prefix='clip.')
    ids, images = text_inputs(sd), image_inputs(sd)
    torch.testing.assert_close(hf_text_features(model, ids),
                               ref.encode_text(sd, ids), **TOL)
    torch.testing.assert_close(hf_image_features(model, images),
                               ref.encode_image(sd, images), **TOL)
    # Forgetting the prefix points at it.
    with pytest.raises(KeyError, match="'clip.'"):
        clip_from_openai(prefixed)


def test_not_a_checkpoint_names_the_file(tmp_path):
    path = tmp_path / 'notes_not_weights.txt'
    path.write_text('just some text, no weights')
    with pytest.raises(ValueError, match='notes_not_weights.txt'):
        load_openai_state_dict(str(path))
    torch.save([1, 2, 3], tmp_path / 'a_list.pt')
    with pytest.raises(ValueError, match='a_list.pt'):
        load_openai_state_dict(str(tmp_path / 'a_list.pt'))
    with pytest.raises(FileNotFoundError, match='missing.pt'):
        load_openai_state_dict(str(tmp_path / 'missing.pt'))


def test_fp16_archive_comes_back_float32(tmp_path):
    sd = ref.make_openai_state_dict(seed=4)
    # As in OpenAI's archives: matrices in fp16, LayerNorms kept in fp32.
    half = {k: v.half() if v.dim() >= 2 else v for k, v in sd.items()}
    path = str(tmp_path / 'ViT-fp16.pt')
    ref.save_openai_torchscript(half, path)
    archive = torch.jit.load(path).state_dict()
    assert archive['text_projection'].dtype == torch.float16
    assert_same_state(read_torchscript_state_dict(path), archive)
    loaded = load_openai_state_dict(path)
    assert {v.dtype for v in loaded.values()} == {torch.float32}
    for key, value in half.items():
        torch.testing.assert_close(loaded[key], value.float(), atol=0, rtol=0)
    model = clip_from_openai(loaded)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    ids, images = text_inputs(sd), image_inputs(sd)
    torch.testing.assert_close(hf_text_features(model, ids),
                               ref.encode_text(loaded, ids), **TOL)
    torch.testing.assert_close(hf_image_features(model, images),
                               ref.encode_image(loaded, images), **TOL)


@pytest.mark.parametrize('key', [
    'visual.transformer.resblocks.0.attn.bias_k',
    'transformer.resblocks.0.mlp.gate.weight',
    'visual.layer1.0.conv1.weight',
    'visual.attnpool.positional_embedding',
])
def test_unmappable_clip_key_is_an_error(key):
    sd = ref.make_openai_state_dict()
    sd[key] = torch.zeros(1)
    with pytest.raises(KeyError, match=key.replace('.', r'\.')):
        openai_to_hf(sd)


def _swap_qk(hf: dict[str, Tensor], layer: str) -> None:
    for kind in ('weight', 'bias'):
        q, k = f'{layer}.self_attn.q_proj.{kind}', f'{layer}.self_attn.k_proj.{kind}'
        hf[q], hf[k] = hf[k], hf[q]


@pytest.mark.parametrize('mistake', ['swap_qk_text', 'swap_qk_vision',
                                     'untransposed_projections'])
def test_comparison_catches_conversion_mistakes(mistake):
    # Square projections (D == W) so that a missing transpose still loads.
    sd = ref.make_openai_state_dict(embed_dim=128, seed=5)
    model = clip_from_openai(sd)
    hf = openai_to_hf(sd)
    if mistake == 'swap_qk_text':
        _swap_qk(hf, 'text_model.encoder.layers.1')
    elif mistake == 'swap_qk_vision':
        _swap_qk(hf, 'vision_model.encoder.layers.0')
    else:
        hf['text_projection.weight'] = sd['text_projection']
        hf['visual_projection.weight'] = sd['visual.proj']
    model.load_state_dict(hf)
    ids, images = text_inputs(sd), image_inputs(sd)
    text_ok = torch.allclose(hf_text_features(model, ids),
                             ref.encode_text(sd, ids), **TOL)
    image_ok = torch.allclose(hf_image_features(model, images),
                              ref.encode_image(sd, images), **TOL)
    assert not (text_ok and image_ok)
    assert text_ok == (mistake == 'swap_qk_vision')
    assert image_ok == (mistake == 'swap_qk_text')
