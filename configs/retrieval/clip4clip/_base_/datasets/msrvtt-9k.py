# MSR-VTT, the paper's main benchmark: train on the 9k split (9,000 videos,
# one sample per caption, ~180k captions), test on 1k-A (JSFusion: 1,000
# video-sentence pairs). 12 frames at 1 fps spread uniformly, 224 px,
# captions of at most 32 tokens. Annotation files as written by
# tools/data/prepare_msrvtt.py; videos under data/msrvtt/videos.
_base_ = ['video_text_224.py']

data_root = 'data/msrvtt'
train_dataloader = dict(
    dataset=dict(ann_file=f'{data_root}/annotations/msrvtt_train_9k.json',
                 data_prefix=dict(video=f'{data_root}/videos')))
val_dataloader = dict(
    dataset=dict(ann_file=f'{data_root}/annotations/msrvtt_test_1k.json',
                 data_prefix=dict(video=f'{data_root}/videos')))
test_dataloader = val_dataloader
