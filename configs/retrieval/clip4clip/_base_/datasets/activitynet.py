# ActivityNet Captions as video-paragraph retrieval: train on 10,009 videos,
# test on val_1 (4,917); each video's sentences are joined into one caption
# and its frames are taken over the whole video (0 .. ceil(duration)).
# 64 frames at 1 fps spread uniformly, 224 px, paragraphs cut at 64 tokens.
# Annotation files as written by tools/data/prepare_activitynet.py (with
# --video-dir, which records each video's real file name); videos under
# data/activitynet/videos.
data_root = 'data/activitynet'
tokenizer = 'openai/clip-vit-base-patch32'  # CLIP's BPE, same for B/16
max_frames = 64
max_words = 64


def pipeline(frame_order: int = 0) -> list:
    return [
        dict(type='DecordInit'),
        dict(type='SampleFramesByRate', max_frames=max_frames,
             feature_framerate=1, slice_framepos=2, frame_order=frame_order),
        dict(type='DecordDecode'),
        dict(type='CLIPResizeCrop', size=224),
        dict(type='TokenizeCaptions', tokenizer=tokenizer,
             max_words=max_words),
        dict(type='PackVideoTextInputs'),
    ]


train_dataloader = dict(
    batch_size=8,  # x 8 GPUs = the paper's 64 (of 64 frames each)
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='mmclip4clip.video_text_collate'),
    dataset=dict(
        type='VideoTextDataset',
        ann_file=f'{data_root}/annotations/activitynet_train.json',
        data_prefix=dict(video=f'{data_root}/videos'),
        pipeline=pipeline()))
val_dataloader = dict(
    batch_size=16,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='mmclip4clip.video_text_collate'),
    dataset=dict(
        type='VideoTextDataset',
        ann_file=f'{data_root}/annotations/activitynet_val_1.json',
        data_prefix=dict(video=f'{data_root}/videos'),
        pipeline=pipeline(),
        test_mode=True))
test_dataloader = val_dataloader

val_evaluator = dict(type='RetrievalMetric')
test_evaluator = val_evaluator
