"""Published CLIP4Clip weights in transformers' format, e.g.
``Searchium-ai/clip4clip-webvid150k``: one directory holding a whole
``CLIPModel`` (``config.json`` of model_type 'clip', one weights file) and a
CLIP tokenizer, which its model card reads with
``CLIPTextModelWithProjection``, ``CLIPVisionModelWithProjection`` and
``CLIPTokenizer``.

A tiny stand-in saved in that layout (no network) is loaded through the
config ``clip4clip_vit-base-p32-res224-webvid150k-pre_...`` with its one
``clip_pretrained`` line pointed at it, and our embeddings are compared with
the card's recipe run by transformers' own classes on the same directory:
text, the normalised projected text feature; video, the mean of the
normalised projected frame features, normalised again (CLIP4Clip meanP).
"""
import json
import shutil
import string
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from mmclip4clip.apis import encode_texts, encode_videos, init_retriever
from mmclip4clip.apis.encode import VideoFileDataset, video_pipeline_cfg
from mmclip4clip.models.backbones.clip import load_clip

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / 'configs/retrieval/clip4clip'
CONFIG = CONFIG_DIR / ('clip4clip_vit-base-p32-res224-webvid150k-pre_'
                       '8xb16-u12-5e_custom-rgb.py')
PUBLISHED_ID = 'Searchium-ai/clip4clip-webvid150k'

# The published config.json's geometry (ViT-B/32 at 224 px, 77 text
# positions, QuickGELU) at a tiny width and depth. As in that file (written
# by transformers 4), each tower's config repeats ``projection_dim``, which
# the card's one-tower classes read, and keeps OpenAI's token ids 0/2/1;
# the end-of-text token has the largest id, where both readers find it.
STAND_IN = dict(
    projection_dim=16,
    text_config=dict(vocab_size=54, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=2,
                     max_position_embeddings=77, hidden_act='quick_gelu',
                     projection_dim=16, bos_token_id=0, eos_token_id=2,
                     pad_token_id=1),
    vision_config=dict(image_size=224, patch_size=32, hidden_size=32,
                       intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, hidden_act='quick_gelu',
                       projection_dim=16),
)
CLIPS = ('red', 'blue', 'green')  # one synthetic test clip of each colour
QUERIES = ['a red square', 'the blue circle moves up', 'green']


def write_clip_tokenizer(out: Path) -> None:
    """A real ``CLIPTokenizer`` (byte-level BPE) over lowercase letters,
    no merges: every
    word is spelt letter by letter; start and end of text get the two
    largest ids (52, 53), as in CLIP's vocabulary."""
    letters = string.ascii_lowercase
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({f'{c}</w>': len(letters) + i for i, c in enumerate(letters)})
    vocab['<|startoftext|>'] = len(vocab)
    vocab['<|endoftext|>'] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(str(out))


@pytest.fixture(scope='module')
def published_dir(tmp_path_factory) -> Path:
    """The stand-in: CLIPModel.save_pretrained + the tokenizer files."""
    out = tmp_path_factory.mktemp('public') / 'clip4clip-webvid150k'
    with torch.random.fork_rng():
        torch.manual_seed(0)
        CLIPModel(CLIPConfig(**STAND_IN)).save_pretrained(str(out))
    write_clip_tokenizer(out)
    return out


def config_for(weights: Path, out: Path) -> Path:
    """The user's edit of the shipped config: its ``clip_pretrained`` line
    pointed at ``weights``, saved as ``out`` (bases by absolute path)."""
    text = CONFIG.read_text()
    line = f"clip_pretrained = '{PUBLISHED_ID}'"
    assert text.count(line) == 1
    text = text.replace(line, f'clip_pretrained = {str(weights)!r}')
    text = text.replace("'_base_/", repr(f'{CONFIG_DIR}/_base_/')[:-1])
    out.write_text(text)
    return out


@pytest.fixture(scope='module')
def config_file(published_dir, tmp_path_factory) -> Path:
    return config_for(published_dir,
                      tmp_path_factory.mktemp('cfg') / CONFIG.name)


@pytest.fixture(scope='module')
def videos(synthetic_data, tmp_path_factory) -> Path:
    """One synthetic test clip per colour of :data:`CLIPS`."""
    out = tmp_path_factory.mktemp('my_videos')
    ann = json.loads((synthetic_data / 'annotations/test.json').read_text())
    for colour in CLIPS:
        rec = next(r for r in ann if r['captions'][0].split()[1] == colour)
        shutil.copy(synthetic_data / 'videos' / rec['video'],
                    out / f'{colour}.mp4')
    return out


def card_text_embeddings(weights: Path, texts: list[str]) -> np.ndarray:
    """The model card's text recipe, one query at a time -> [N, D]."""
    tokenizer = CLIPTokenizer.from_pretrained(str(weights))
    model = CLIPTextModelWithProjection.from_pretrained(str(weights)).eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            inputs = tokenizer(text=text, return_tensors='pt')
            out = model(input_ids=inputs['input_ids'],
                        attention_mask=inputs['attention_mask'])
            rows.append(out[0] / out[0].norm(dim=-1, keepdim=True))
    return torch.cat(rows).numpy()


def card_video_embeddings(weights: Path, cfg: Config,
                          paths: list[Path]) -> np.ndarray:
    """The card's video recipe (CLIP4Clip meanP) on the frames our test
    pipeline decodes and normalises: per-frame ``image_embeds``, each
    normalised, averaged over the real frames, normalised -> [M, D]."""
    vision = CLIPVisionModelWithProjection.from_pretrained(str(weights))
    vision.eval()
    preprocessor = init_retriever(cfg).data_preprocessor
    dataset = VideoFileDataset(paths, video_pipeline_cfg(cfg))
    rows = []
    with torch.no_grad():
        for i in range(len(dataset)):
            sample = dataset[i]
            assert sample['error'] is None, sample['error']
            inputs = preprocessor(dict(inputs=dict(
                imgs=sample['imgs'][None],
                frame_mask=sample['frame_mask'][None])))['inputs']
            frames = inputs['frames'][0][inputs['frame_mask'][0].bool()]
            assert len(frames) >= 2  # a mean over several frames
            emb = vision(pixel_values=frames).image_embeds  # [T, D]
            emb = emb / emb.norm(dim=-1, keepdim=True)
            video = emb.mean(dim=0)
            rows.append(video / video.norm())
    return torch.stack(rows).numpy()


def test_stand_in_has_the_published_layout(published_dir):
    # What the card loads, and how the published config.json reads.
    config = json.loads((published_dir / 'config.json').read_text())
    assert config['model_type'] == 'clip'
    assert config['architectures'] == ['CLIPModel']
    assert {'text_config', 'vision_config'} <= config.keys()
    # The published repository also has vocab.json, merges.txt and
    # special_tokens_map.json, which transformers 5 no longer writes or needs.
    assert sorted(p.name for p in published_dir.iterdir()) == [
        'config.json', 'model.safetensors', 'tokenizer.json',
        'tokenizer_config.json']
    CLIPTextModelWithProjection.from_pretrained(str(published_dir))
    CLIPVisionModelWithProjection.from_pretrained(str(published_dir))
    ids = CLIPTokenizer.from_pretrained(str(published_dir))('a red')
    # 'a' -> a</w>; 'red' -> r, e, d</w>; start and end of text around.
    assert ids['input_ids'] == [52, 26 + 0, 17, 4, 26 + 3, 53]


def test_text_embeddings_are_the_cards(published_dir, config_file):
    cfg = Config.fromfile(str(config_file))
    model = init_retriever(cfg)
    ours = encode_texts(model, cfg, QUERIES)
    card = card_text_embeddings(published_dir, QUERIES)
    assert ours.shape == card.shape == (len(QUERIES), 16)
    assert np.abs(ours - card).max() < 1e-6
    # Not vacuous: the queries' embeddings differ.
    assert np.abs(card[0] - card[1]).max() > 1e-3


def test_video_embeddings_are_the_cards_mean_of_frames(published_dir,
                                                      config_file, videos):
    cfg = Config.fromfile(str(config_file))
    model = init_retriever(cfg)
    paths = [videos / f'{c}.mp4' for c in CLIPS]
    ours, info = encode_videos(model, cfg, paths, batch_size=2)
    assert [i['error'] for i in info] == [None] * len(CLIPS)
    card = card_video_embeddings(published_dir, cfg, paths)
    assert np.abs(ours - card).max() < 1e-6
    assert np.abs(card[0] - card[1]).max() > 1e-4


def test_index_and_search_with_the_published_weights(
        published_dir, config_file, videos, tmp_path, load_tool,
        monkeypatch, capsys):
    """The README recipe: index_videos.py CONFIG VIDEO_DIR INDEX with no
    checkpoint, then search.py INDEX QUERY; the scores and order are the
    card's embeddings' inner products."""
    index = tmp_path / 'index'
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setattr(sys, 'argv', [
        'index_videos.py', str(config_file), str(videos), str(index),
        '--batch-size', '2'])
    assert load_tool('tools/index_videos.py').main() == 0, \
        capsys.readouterr().err
    assert 'added=3 ' in capsys.readouterr().out
    meta = json.loads((index / 'index.json').read_text())
    assert meta['checkpoint'] is None
    cfg = Config.fromfile(str(config_file))
    videos_emb = card_video_embeddings(
        published_dir, cfg, [videos / v['path'] for v in meta['videos']])
    search = load_tool('tools/search.py')
    for query, text_emb in zip(QUERIES,
                               card_text_embeddings(published_dir, QUERIES),
                               strict=True):
        monkeypatch.setattr(sys, 'argv', [
            'search.py', str(index), query, '--topk', '3', '--json'])
        assert search.main() == 0
        hits = json.loads(capsys.readouterr().out)
        scores = videos_emb @ text_emb
        order = np.argsort(-scores, kind='stable')
        # Not vacuous: the three scores are apart by more than rounding.
        assert np.all(np.diff(scores[order]) < -1e-5), scores[order]
        assert [h['path'] for h in hits] == [
            meta['videos'][i]['path'] for i in order]
        np.testing.assert_allclose([h['score'] for h in hits],
                                   scores[order], atol=1e-6)


def test_missing_logit_scale_is_clips_initial_value(published_dir,
                                                    tmp_path):
    # Retrieval ranks do not depend on it; left out of the weights, it is
    # CLIP's initial ln(1 / 0.07) with a warning, not uninitialised memory.
    copy = shutil.copytree(published_dir, tmp_path / 'no_logit_scale')
    weights = load_file(str(copy / 'model.safetensors'))
    del weights['logit_scale']
    save_file(weights, str(copy / 'model.safetensors'),
              metadata=dict(format='pt'))
    with pytest.warns(UserWarning, match='no logit_scale.*2.6592'):
        clip = load_clip(str(copy))
    assert clip.logit_scale.item() == pytest.approx(2.6592)
    full = load_clip(str(published_dir)).state_dict()
    for key, value in clip.state_dict().items():
        if key != 'logit_scale':
            assert torch.equal(value, full[key]), key


def test_errors_name_the_directory_or_file(published_dir, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(FileNotFoundError,
                       match=f'{empty} has no config.json'):
        load_clip(str(empty))

    bad_json = shutil.copytree(published_dir, tmp_path / 'bad_json')
    (bad_json / 'config.json').write_text('{"model_type": ')
    with pytest.raises(ValueError,
                       match=f'{bad_json}/config.json is not a JSON object'):
        load_clip(str(bad_json))

    # The card's text class saved alone: one tower, not CLIP.
    text_only = tmp_path / 'text_only'
    CLIPTextModelWithProjection.from_pretrained(
        str(published_dir)).save_pretrained(str(text_only))
    with pytest.raises(ValueError, match=(
            f"{text_only}/config.json describes model_type "
            "'clip_text_model' \\(a text tower alone\\), not a CLIP")):
        load_clip(str(text_only))

    # Another projection width in config.json than in the weights.
    wrong_dim = shutil.copytree(published_dir, tmp_path / 'wrong_dim')
    config = json.loads((wrong_dim / 'config.json').read_text())
    config['projection_dim'] = 8
    (wrong_dim / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match=(
            f'the weights in {wrong_dim} do not have the shapes its '
            'config.json gives.*text_projection.weight \\(16, 32\\) != '
            '\\(8, 32\\)')):
        load_clip(str(wrong_dim))

    # Weights without the image tower: an error, not a random tower.
    no_vision = shutil.copytree(published_dir, tmp_path / 'no_vision')
    weights = load_file(str(no_vision / 'model.safetensors'))
    weights = {k: v for k, v in weights.items()
               if not k.startswith('vision_model.')}
    save_file(weights, str(no_vision / 'model.safetensors'),
              metadata=dict(format='pt'))
    with pytest.raises(ValueError, match=(
            f'the weights in {no_vision} lack \\d+ tensor\\(s\\).*'
            'vision_model.')):
        load_clip(str(no_vision))


def test_index_tool_names_a_directory_that_is_not_clip(
        published_dir, videos, tmp_path, load_tool, monkeypatch, capsys):
    text_only = tmp_path / 'text_only'
    CLIPTextModelWithProjection.from_pretrained(
        str(published_dir)).save_pretrained(str(text_only))
    write_clip_tokenizer(text_only)
    config_file = config_for(text_only, tmp_path / CONFIG.name)
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setattr(sys, 'argv', [
        'index_videos.py', str(config_file), str(videos),
        str(tmp_path / 'index')])
    assert load_tool('tools/index_videos.py').main() == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f'error: {text_only}/config.json describes '
                          "model_type 'clip_text_model'")
    assert not (tmp_path / 'index').exists()


def test_weights_replaced_in_place_are_not_the_indexed_ones(
        published_dir, videos, tmp_path, load_tool, monkeypatch, capsys):
    """Without a checkpoint the index fingerprint covers the directory's
    weight bytes: after other weights are saved over them, search.py and
    index_videos.py refuse the index (a silent mix of two models' vectors
    otherwise); with the original bytes back, both accept it again."""
    weights = shutil.copytree(published_dir, tmp_path / 'weights')
    config_file = config_for(weights, tmp_path / CONFIG.name)
    index = tmp_path / 'index'
    monkeypatch.setenv('LOCAL_RANK', '0')
    index_argv = ['index_videos.py', str(config_file), str(videos),
                  str(index), '--batch-size', '3']
    search_argv = ['search.py', str(index), 'red', '--json']
    index_tool = load_tool('tools/index_videos.py')
    search_tool = load_tool('tools/search.py')
    monkeypatch.setattr(sys, 'argv', index_argv)
    assert index_tool.main() == 0, capsys.readouterr().err
    capsys.readouterr()

    original = (weights / 'model.safetensors').read_bytes()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        CLIPModel(CLIPConfig(**STAND_IN)).save_pretrained(str(weights))
    assert (weights / 'model.safetensors').read_bytes() != original
    for argv, tool in ((search_argv, search_tool), (index_argv, index_tool)):
        monkeypatch.setattr(sys, 'argv', argv)
        assert tool.main() != 0
        assert 'another model' in capsys.readouterr().err

    (weights / 'model.safetensors').write_bytes(original)
    monkeypatch.setattr(sys, 'argv', search_argv)
    assert search_tool.main() == 0, capsys.readouterr().err
    assert len(json.loads(capsys.readouterr().out)) == len(CLIPS)
