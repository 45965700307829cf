# Your own videos in mmclip4clip's annotation format (see the README):
# 12 frames at 1 fps, 224 px, captions of at most 32 tokens. Leaf configs
# replace `tokenizer` in the pipelines with their `clip_pretrained` (the CLIP
# weights' directory or hub id).
data_root = 'data/my_dataset'
tokenizer = 'openai/clip-vit-base-patch32'
max_frames = 12
max_words = 32

train_pipeline = [
    dict(type='AVInit'),
    dict(type='SampleFramesByRate', max_frames=max_frames,
         feature_framerate=1, slice_framepos=2, frame_order=0),
    dict(type='AVDecode'),
    dict(type='CLIPResizeCrop', size=224),
    dict(type='TokenizeCaptions', tokenizer=tokenizer, max_words=max_words),
    dict(type='PackVideoTextInputs'),
]
test_pipeline = train_pipeline

train_dataloader = dict(
    batch_size=16,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='mmclip4clip.video_text_collate'),
    dataset=dict(
        type='VideoTextDataset',
        ann_file=f'{data_root}/annotations/train.json',
        data_prefix=dict(video=f'{data_root}/videos'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='mmclip4clip.video_text_collate'),
    dataset=dict(
        type='VideoTextDataset',
        ann_file=f'{data_root}/annotations/test.json',
        data_prefix=dict(video=f'{data_root}/videos'),
        pipeline=test_pipeline,
        test_mode=True))
test_dataloader = val_dataloader

val_evaluator = dict(type='RetrievalMetric')
test_evaluator = val_evaluator
