# Video-paragraph retrieval (ActivityNet Captions, DiDeMo): the sentence
# base with 64 frames at 1 fps spread uniformly and paragraphs cut at 64
# tokens, 8 videos per GPU (x 8 GPUs = the paper's 64). Leaf dataset files
# set the annotation files.
_base_ = ['video_text_224.py']

tokenizer = 'openai/clip-vit-base-patch32'  # CLIP's BPE, same for B/16
max_frames = 64
max_words = 64

pipeline = [
    dict(type='AVInit'),
    dict(type='SampleFramesByRate', max_frames=max_frames,
         feature_framerate=1, slice_framepos=2, frame_order=0),
    dict(type='AVDecode'),
    dict(type='CLIPResizeCrop', size=224),
    dict(type='TokenizeCaptions', tokenizer=tokenizer, max_words=max_words),
    dict(type='PackVideoTextInputs'),
]
train_dataloader = dict(batch_size=8, dataset=dict(pipeline=pipeline))
val_dataloader = dict(dataset=dict(pipeline=pipeline))
test_dataloader = val_dataloader
