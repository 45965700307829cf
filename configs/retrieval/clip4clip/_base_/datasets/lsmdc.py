# LSMDC: train on ~101k movie clips (one sentence each), test on the 1,000
# clips of LSMDC16_challenge_1000_publictect.csv. 12 frames at 1 fps spread
# uniformly, 224 px, captions of at most 32 tokens. Annotation files as
# written by tools/data/prepare_lsmdc.py; clips under
# data/lsmdc/videos/<movie>/<clip_id>.avi.
_base_ = ['video_text_224.py']

data_root = 'data/lsmdc'
train_dataloader = dict(
    dataset=dict(ann_file=f'{data_root}/annotations/lsmdc_train.json',
                 data_prefix=dict(video=f'{data_root}/videos')))
val_dataloader = dict(
    dataset=dict(ann_file=f'{data_root}/annotations/lsmdc_test_1k.json',
                 data_prefix=dict(video=f'{data_root}/videos')))
test_dataloader = val_dataloader
