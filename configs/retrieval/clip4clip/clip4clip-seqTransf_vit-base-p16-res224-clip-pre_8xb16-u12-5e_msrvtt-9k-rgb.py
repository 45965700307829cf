# CLIP4Clip seqTransf (2d linear patch) on ViT-B/16, MSR-VTT 9k train,
# 1k-A test, with the paper's recipe (8 GPUs x 16, 12 frames, 5 epochs).
_base_ = [
    '_base_/models/clip4clip_vit-base-p16.py',
    '_base_/datasets/msrvtt-9k.py',
    '_base_/schedules/clip4clip_paper.py',
    '_base_/default_runtime.py',
]

# CLIP weights AND tokenizer, set once here: a Hugging Face directory (a
# local copy works offline) or a hub id.
clip_pretrained = 'openai/clip-vit-base-patch16'

model = dict(backbone=dict(pretrained=clip_pretrained),
             head=dict(type='SeqTransfHead', embed_dim=512, num_layers=4))

# The dataset base's pipeline, tokenizing with clip_pretrained's tokenizer.
pipeline = [
    dict(step, tokenizer=clip_pretrained)
    if step.type == 'TokenizeCaptions' else step
    for step in _base_.test_dataloader.dataset.pipeline
]
train_dataloader = dict(dataset=dict(pipeline=pipeline))
val_dataloader = dict(dataset=dict(pipeline=pipeline))
test_dataloader = val_dataloader
