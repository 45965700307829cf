# MSVD: train on 1,200 videos (one sample per caption, ~48k captions), test
# on 670 videos with all their captions (~27k; text-to-video ranks every
# caption, video-to-text scores a video by its best caption). 12 frames at
# 1 fps spread uniformly, 224 px, captions of at most 32 tokens. Annotation
# files as written by tools/data/prepare_msvd.py; videos under data/msvd/videos.
_base_ = ['video_text_224.py']

data_root = 'data/msvd'
train_dataloader = dict(
    dataset=dict(ann_file=f'{data_root}/annotations/msvd_train.json',
                 data_prefix=dict(video=f'{data_root}/videos')))
val_dataloader = dict(
    dataset=dict(ann_file=f'{data_root}/annotations/msvd_test.json',
                 data_prefix=dict(video=f'{data_root}/videos')))
test_dataloader = val_dataloader
