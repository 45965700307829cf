# CLIP4Clip meanP on OpenAI's CLIP ViT-B/32 for your own dataset in
# mmclip4clip's annotation format, with mmaction2's fp32 recipe (AdamW 1e-5,
# weight decay 0.05, 0.5 epoch warm-up then cosine, 5 epochs, 8 GPUs x 16).
_base_ = [
    '_base_/models/clip4clip_vit-base-p32.py',
    '_base_/datasets/video_text_224.py',
    '_base_/schedules/adamw_warmup_cosine.py',
    '_base_/default_runtime.py',
]

# CLIP weights AND tokenizer: a Hugging Face directory (offline) or hub id.
clip_pretrained = 'openai/clip-vit-base-patch32'
data_root = 'data/my_dataset'

pipeline = [
    dict(type='AVInit'),
    dict(type='SampleFramesByRate', max_frames=12, feature_framerate=1,
         slice_framepos=2, frame_order=0),
    dict(type='AVDecode'),
    dict(type='CLIPResizeCrop', size=224),
    dict(type='TokenizeCaptions', tokenizer=clip_pretrained, max_words=32),
    dict(type='PackVideoTextInputs'),
]

model = dict(backbone=dict(pretrained=clip_pretrained))
train_dataloader = dict(
    dataset=dict(
        ann_file=f'{data_root}/annotations/train.json',
        data_prefix=dict(video=f'{data_root}/videos'),
        pipeline=pipeline))
val_dataloader = dict(
    dataset=dict(
        ann_file=f'{data_root}/annotations/test.json',
        data_prefix=dict(video=f'{data_root}/videos'),
        pipeline=pipeline))
test_dataloader = val_dataloader
