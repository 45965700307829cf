"""Resize/crop, tokenisation, packing and batching of videos and captions."""
import numpy as np
import pytest
import torch
from mmengine.registry import DefaultScope
from PIL import Image

import mmclip4clip  # noqa: F401  (registers the transforms)
from mmclip4clip.datasets.collate import video_text_collate
from mmclip4clip.datasets.transforms import (
    CLIPResizeCrop,
    PackVideoTextInputs,
    TokenizeCaptions,
    resize_center_crop,
    tokenize,
)
from mmclip4clip.registry import FUNCTIONS, TRANSFORMS


def random_frame(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def pil_resize_center_crop(frame, size):
    """CLIP's torchvision Resize(size, BICUBIC) + CenterCrop(size) on a PIL
    image, spelled out: shorter side -> size, longer side
    int(size * long / short), crop offsets int(round(excess / 2))."""
    height, width = frame.shape[:2]
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)
    if height <= width:
        new_h, new_w = size, new_long
    else:
        new_h, new_w = new_long, size
    resized = np.asarray(Image.fromarray(frame).resize(
        (new_w, new_h), resample=Image.Resampling.BICUBIC))
    top = int(round((new_h - size) / 2))
    left = int(round((new_w - size) / 2))
    return resized[top:top + size, left:left + size], (new_h, new_w, top,
                                                       left)


# (height, width, size, expected resized height, width, crop top, left)
RESIZE_CASES = [
    # landscape, shrink: 48x64 -> 32x42, crop left 5
    (48, 64, 32, 32, 42, 0, 5),
    # portrait, shrink
    (64, 48, 32, 42, 32, 5, 0),
    # square
    (50, 50, 32, 32, 32, 0, 0),
    # long side truncated: 32 * 57 / 40 = 45.6 -> 45; excess 13,
    # 6.5 rounds half to even -> 6
    (40, 57, 32, 32, 45, 0, 6),
    # 32 * 59 / 40 = 47.2 -> 47; excess 15, 7.5 -> 8
    (40, 59, 32, 32, 47, 0, 8),
    # portrait with odd excess: 32 * 51 / 35 = 46.6 -> 46; excess 14 -> 7
    (51, 35, 32, 46, 32, 7, 0),
    # portrait, 32 * 59 / 40 = 47.2 -> 47, excess 15 -> 8
    (59, 40, 32, 47, 32, 8, 0),
    # upscaling a small landscape frame
    (20, 30, 32, 32, 48, 0, 8),
    # real video sizes
    (720, 1280, 224, 224, 398, 0, 87),
    (240, 320, 224, 224, 298, 0, 37),
]


@pytest.mark.parametrize('height, width, size, new_h, new_w, top, left',
                         RESIZE_CASES)
def test_resize_center_crop_equals_pil_resize_and_centre_crop(
        height, width, size, new_h, new_w, top, left):
    frame = random_frame(height, width, seed=height * width)
    out = resize_center_crop(frame, size)
    assert out.shape == (size, size, 3)
    assert out.dtype == np.uint8
    expected, geometry = pil_resize_center_crop(frame, size)
    assert geometry == (new_h, new_w, top, left)
    np.testing.assert_array_equal(out, expected)


def test_resize_center_crop_leaves_a_frame_at_the_size_unchanged():
    frame = random_frame(32, 32, seed=1)
    np.testing.assert_array_equal(resize_center_crop(frame, 32), frame)


def test_resize_center_crop_only_crops_when_short_side_is_the_size():
    frame = random_frame(32, 45, seed=2)
    # excess 13 -> offset round(6.5) = 6
    np.testing.assert_array_equal(resize_center_crop(frame, 32),
                                  frame[:, 6:38])
    frame = random_frame(47, 32, seed=3)
    np.testing.assert_array_equal(resize_center_crop(frame, 32),
                                  frame[8:40])


def test_resize_is_bicubic_not_bilinear_nor_nearest():
    frame = random_frame(48, 64, seed=4)
    out = resize_center_crop(frame, 32)
    for resample in (Image.Resampling.BILINEAR, Image.Resampling.NEAREST):
        other = np.asarray(Image.fromarray(frame).resize((42, 32), resample))
        assert not np.array_equal(out, other[:, 5:37])


def test_clip_resize_crop_transform_resizes_every_frame():
    frames = [random_frame(48, 64, seed=s) for s in range(3)]
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        transform = TRANSFORMS.build(dict(type='CLIPResizeCrop', size=32))
    assert isinstance(transform, CLIPResizeCrop)
    results = transform(dict(imgs=list(frames), img_shape=(48, 64)))
    assert results['img_shape'] == (32, 32)
    assert len(results['imgs']) == 3
    for frame, out in zip(frames, results['imgs']):
        np.testing.assert_array_equal(out, pil_resize_center_crop(frame,
                                                                  32)[0])


# ---------------------------------------------------------------- tokenize

CAPTIONS = [
    'a red square moves left',
    'the blue circle is moving to the right',
    'a white triangle stays still',
]


def word_ids(tokenizer, caption):
    """Ids of the word-level synthetic tokenizer, looked up directly."""
    vocab = tokenizer.get_vocab()
    return [vocab[word] for word in caption.split()]


@pytest.mark.parametrize('max_words', [16, 7, 5, 3])
def test_tokenize_rows_are_bos_words_eos_then_zeros(tokenizer, max_words):
    ids, mask = tokenize(tokenizer, CAPTIONS, max_words)
    assert ids.shape == mask.shape == (len(CAPTIONS), max_words)
    assert ids.dtype == mask.dtype == np.int64
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for row, caption in enumerate(CAPTIONS):
        tokens = [bos, *word_ids(tokenizer, caption)[:max_words - 2], eos]
        expected = tokens + [0] * (max_words - len(tokens))
        assert ids[row].tolist() == expected
        assert mask[row].tolist() == ([1] * len(tokens) +
                                      [0] * (max_words - len(tokens)))
        # The end token has the largest id, so argmax finds it
        # (docs/models.md#text).
        assert ids[row].argmax() == len(tokens) - 1
        assert ids[row].max() == eos


def test_tokenize_truncation_keeps_bos_and_eos_at_max_words(tokenizer):
    caption = 'the blue circle is moving to the right'  # 8 words
    ids, mask = tokenize(tokenizer, [caption], 6)
    words = word_ids(tokenizer, caption)
    assert ids[0].tolist() == [tokenizer.bos_token_id, *words[:4],
                               tokenizer.eos_token_id]
    assert mask[0].tolist() == [1] * 6
    # Exactly L - 2 words: no truncation and no padding.
    ids, mask = tokenize(tokenizer, [caption], 10)
    assert ids[0, -1] == tokenizer.eos_token_id and mask[0].all()
    assert ids[0, 1:-1].tolist() == words


def test_tokenize_caption_with_unknown_word_uses_unk(tokenizer):
    ids, mask = tokenize(tokenizer, ['a zebra square'], 8)
    vocab = tokenizer.get_vocab()
    assert ids[0, :5].tolist() == [tokenizer.bos_token_id, vocab['a'],
                                   tokenizer.unk_token_id, vocab['square'],
                                   tokenizer.eos_token_id]
    assert mask[0].sum() == 5


def test_tokenize_captions_transform_from_config(synthetic, tokenizer):
    with DefaultScope.overwrite_default_scope('mmclip4clip'):
        transform = TRANSFORMS.build(dict(
            type='TokenizeCaptions', tokenizer=str(synthetic / 'tokenizer'),
            max_words=12))
    assert isinstance(transform, TokenizeCaptions)
    results = transform(dict(captions=CAPTIONS[:2]))
    expected_ids, expected_mask = tokenize(tokenizer, CAPTIONS[:2], 12)
    np.testing.assert_array_equal(results['input_ids'], expected_ids)
    np.testing.assert_array_equal(results['attention_mask'], expected_mask)


def test_tokenize_captions_rejects_max_words_below_3(synthetic):
    with pytest.raises(ValueError):
        TokenizeCaptions(str(synthetic / 'tokenizer'), max_words=2)


# ------------------------------------------------------- packing, collate


def packed_sample(num_frames, max_frames, num_captions, lengths, seed=0,
                  size=8, max_words=10):
    """Pack ``num_frames`` random frames and ``num_captions`` token rows of
    ``lengths`` real tokens (bos ... eos) each."""
    rng = np.random.default_rng(seed)
    frames = [rng.integers(1, 256, (size, size, 3), dtype=np.uint8)
              for _ in range(num_frames)]
    ids = np.zeros((num_captions, max_words), dtype=np.int64)
    mask = np.zeros((num_captions, max_words), dtype=np.int64)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(2, 50, length)
        ids[row, length - 1] = 99
        mask[row, :length] = 1
    results = dict(imgs=frames, max_frames=max_frames, input_ids=ids,
                   attention_mask=mask, sample_idx=seed, video_id=f'v{seed}',
                   filename=f'v{seed}.mp4', captions=['c'] * num_captions)
    return PackVideoTextInputs()(results), frames, ids, mask


def test_pack_pads_to_max_frames_with_zero_frames_at_the_end():
    packed, frames, ids, mask = packed_sample(3, 5, 2, [4, 6])
    inputs = packed['inputs']
    assert inputs['imgs'].shape == (5, 3, 8, 8)
    assert inputs['imgs'].dtype == torch.uint8
    for t, frame in enumerate(frames):  # real frames first, in order
        assert torch.equal(inputs['imgs'][t],
                           torch.from_numpy(frame).permute(2, 0, 1))
    assert not inputs['imgs'][3:].any()
    assert inputs['frame_mask'].tolist() == [True, True, True, False, False]
    assert inputs['frame_mask'].dtype == torch.bool
    assert torch.equal(inputs['input_ids'], torch.from_numpy(ids))
    assert torch.equal(inputs['attention_mask'], torch.from_numpy(mask))
    meta = packed['data_samples'].metainfo
    assert meta['video_id'] == 'v0' and meta['filename'] == 'v0.mp4'
    assert meta['captions'] == ['c', 'c']


def test_pack_without_max_frames_keeps_all_frames():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
              for _ in range(2)]
    packed = PackVideoTextInputs()(dict(
        imgs=frames, input_ids=np.ones((1, 3), dtype=np.int64),
        attention_mask=np.ones((1, 3), dtype=np.int64)))
    assert packed['inputs']['imgs'].shape == (2, 3, 4, 6)
    assert packed['inputs']['frame_mask'].all()


def test_pack_with_exactly_max_frames_has_no_padding():
    packed, _, _, _ = packed_sample(4, 4, 1, [3])
    assert packed['inputs']['frame_mask'].all()


def test_collate_stacks_videos_and_concatenates_captions():
    # Uneven caption counts (2, 1, 3) and frame counts.
    samples = [packed_sample(3, 5, 2, [4, 6], seed=0),
               packed_sample(5, 5, 1, [7], seed=1),
               packed_sample(1, 5, 3, [3, 5, 2], seed=2)]
    batch = video_text_collate([s[0] for s in samples])
    inputs = batch['inputs']
    assert inputs['imgs'].shape == (3, 5, 3, 8, 8)
    assert inputs['frame_mask'].tolist() == [
        [True, True, True, False, False],
        [True] * 5,
        [True, False, False, False, False],
    ]
    for b, (packed, *_) in enumerate(samples):
        assert torch.equal(inputs['imgs'][b], packed['inputs']['imgs'])
    assert inputs['text_video_index'].tolist() == [0, 0, 1, 2, 2, 2]
    full_ids = np.concatenate([s[2] for s in samples])
    full_mask = np.concatenate([s[3] for s in samples])
    # Captions keep their padding (the backbone cuts it, for every caller).
    np.testing.assert_array_equal(inputs['input_ids'].numpy(), full_ids)
    np.testing.assert_array_equal(inputs['attention_mask'].numpy(), full_mask)
    assert inputs['attention_mask'].sum(1).tolist() == [4, 6, 7, 3, 5, 2]
    # Each caption's row belongs to the video text_video_index names.
    for row, video in enumerate(inputs['text_video_index'].tolist()):
        own = samples[video][2]
        assert any(np.array_equal(full_ids[row], r) for r in own)
    assert [s.video_id for s in batch['data_samples']] == ['v0', 'v1', 'v2']


def test_collate_of_full_length_captions_keeps_all_columns():
    samples = [packed_sample(2, 3, 1, [10], seed=0),
               packed_sample(2, 3, 2, [2, 3], seed=1)]
    batch = video_text_collate([s[0] for s in samples])
    assert batch['inputs']['input_ids'].shape == (3, 10)
    assert batch['inputs']['text_video_index'].tolist() == [0, 1, 1]


def test_collate_is_registered_under_the_scope_prefix():
    assert FUNCTIONS.get('mmclip4clip.video_text_collate') is \
        video_text_collate
