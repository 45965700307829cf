# CLIP4Clip seqTransf on ViT-B/32 for LSMDC (~101k train clips; 1,000 test clips),
# with the paper's settings for it (12 frames; paper recipe, 5 epochs).
_base_ = [
    '_base_/models/clip4clip_vit-base-p32.py',
    '_base_/datasets/lsmdc.py',
    '_base_/schedules/clip4clip_paper.py',
    '_base_/default_runtime.py',
]

# CLIP weights AND tokenizer, set once here: a Hugging Face directory (a
# local copy works offline) or a hub id.
clip_pretrained = 'openai/clip-vit-base-patch32'

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
