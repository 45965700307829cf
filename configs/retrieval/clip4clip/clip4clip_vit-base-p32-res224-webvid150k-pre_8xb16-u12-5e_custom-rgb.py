# CLIP4Clip meanP with the community WebVid-150k weights
# (Searchium-ai/clip4clip-webvid150k: CLIP ViT-B/32 fine-tuned by CLIP4Clip
# on the first 150k WebVid clips, published in transformers' CLIPModel
# format), for searching your own videos with no training
# (tools/index_videos.py CONFIG VIDEO_DIR INDEX, no checkpoint) or as the
# start of fine-tuning on your dataset with the custom config's recipe.
# The weights are used as published: meanP has no parameters of its own,
# and the text and video embeddings are the model card's (normalised
# projected text feature; mean of the normalised frame features, normalised
# again).
_base_ = [
    '_base_/models/clip4clip_vit-base-p32.py',
    '_base_/datasets/video_text_224.py',
    '_base_/schedules/adamw_warmup_cosine.py',
    '_base_/default_runtime.py',
]

# Weights AND tokenizer: a local copy of the repository (offline), e.g.
#   huggingface-cli download Searchium-ai/clip4clip-webvid150k \
#       --local-dir checkpoints/clip4clip-webvid150k
# or the hub id.
clip_pretrained = 'Searchium-ai/clip4clip-webvid150k'
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
