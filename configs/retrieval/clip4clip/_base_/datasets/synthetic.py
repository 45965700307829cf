# The built-in synthetic dataset (tools/data/make_synthetic_dataset.py):
# 64 px clips of moving shapes, 4 s at 10 fps, captions naming colour, shape
# and motion; a word-level tokenizer saved beside the data.
data_root = 'data/synthetic'
tokenizer = f'{data_root}/tokenizer'
max_frames = 8
max_words = 16
image_size = 32


def video_text_pipeline(frame_order: int = 0) -> list:
    return [
        dict(type='AVInit'),
        dict(type='SampleFramesByRate', max_frames=max_frames,
             feature_framerate=2, slice_framepos=2, frame_order=frame_order),
        dict(type='AVDecode'),
        dict(type='CLIPResizeCrop', size=image_size),
        dict(type='TokenizeCaptions', tokenizer=tokenizer,
             max_words=max_words),
        dict(type='PackVideoTextInputs'),
    ]


train_pipeline = video_text_pipeline()
test_pipeline = video_text_pipeline()

train_dataloader = dict(
    batch_size=32,
    # The clips are tiny and decode quickly; on a small CPU worker
    # processes only compete with the model for the cores.
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='mmclip4clip.video_text_collate'),
    dataset=dict(
        type='VideoTextDataset',
        ann_file=f'{data_root}/annotations/train.json',
        data_prefix=dict(video=f'{data_root}/videos'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    # The clips are tiny and decode quickly; on a small CPU worker
    # processes only compete with the model for the cores.
    num_workers=0,
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
