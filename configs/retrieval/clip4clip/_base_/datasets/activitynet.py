# ActivityNet Captions as video-paragraph retrieval: train on 10,009 videos,
# test on val_1 (4,917); each video's sentences are joined into one caption
# and its frames are taken over the whole video (0 .. ceil(duration)).
# 64 frames at 1 fps spread uniformly, 224 px, paragraphs cut at 64 tokens.
# Annotation files as written by tools/data/prepare_activitynet.py (with
# --video-dir, which records each video's real file name); videos under
# data/activitynet/videos.
_base_ = ['video_paragraph_224.py']

data_root = 'data/activitynet'
train_dataloader = dict(
    dataset=dict(ann_file=f'{data_root}/annotations/activitynet_train.json',
                 data_prefix=dict(video=f'{data_root}/videos')))
val_dataloader = dict(
    dataset=dict(ann_file=f'{data_root}/annotations/activitynet_val_1.json',
                 data_prefix=dict(video=f'{data_root}/videos')))
test_dataloader = val_dataloader
