# CLIP4Clip seqTransf on ViT-B/32 for ActivityNet Captions as video-paragraph retrieval (val_1 test),
# with the paper's settings for it (64 frames; paper recipe, 5 epochs).
_base_ = [
    '_base_/models/clip4clip_vit-base-p32.py',
    '_base_/datasets/activitynet.py',
    '_base_/schedules/clip4clip_paper.py',
    '_base_/default_runtime.py',
]

model = dict(head=dict(type='SeqTransfHead', embed_dim=512, num_layers=4))
auto_scale_lr = dict(base_batch_size=64)
