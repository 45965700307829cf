# LSMDC: train on ~101k movie clips (one sentence each), test on the 1,000
# clips of LSMDC16_challenge_1000_publictect.csv. 12 frames at 1 fps spread
# uniformly, 224 px, captions of at most 32 tokens. Annotation files as
# written by tools/data/prepare_lsmdc.py; clips under
# data/lsmdc/videos/<movie>/<clip_id>.avi.
data_root = 'data/lsmdc'
tokenizer = 'openai/clip-vit-base-patch32'  # CLIP's BPE, same for B/16
max_frames = 12
max_words = 32


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
    batch_size=16,  # x 8 GPUs = the paper's 128
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='mmclip4clip.video_text_collate'),
    dataset=dict(
        type='VideoTextDataset',
        ann_file=f'{data_root}/annotations/lsmdc_train.json',
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
        ann_file=f'{data_root}/annotations/lsmdc_test_1k.json',
        data_prefix=dict(video=f'{data_root}/videos'),
        pipeline=pipeline(),
        test_mode=True))
test_dataloader = val_dataloader

val_evaluator = dict(type='RetrievalMetric')
test_evaluator = val_evaluator
