# DiDeMo as video-paragraph retrieval: train on ~8.4k videos, test on ~1k;
# each video's descriptions are joined into one caption and its frames are
# taken over 0 .. 31 s (shorter videos whole). 64 frames at 1 fps spread
# uniformly, 224 px, paragraphs cut at 64 tokens. Annotation files as
# written by tools/data/prepare_didemo.py (with --video-dir, which records
# each video's real file name); videos under data/didemo/videos.
_base_ = ['video_paragraph_224.py']

data_root = 'data/didemo'
train_dataloader = dict(
    dataset=dict(ann_file=f'{data_root}/annotations/didemo_train.json',
                 data_prefix=dict(video=f'{data_root}/videos')))
val_dataloader = dict(
    dataset=dict(ann_file=f'{data_root}/annotations/didemo_test.json',
                 data_prefix=dict(video=f'{data_root}/videos')))
test_dataloader = val_dataloader
