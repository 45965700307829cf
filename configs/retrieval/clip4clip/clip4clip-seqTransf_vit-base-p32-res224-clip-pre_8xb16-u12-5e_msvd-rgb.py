# CLIP4Clip seqTransf on ViT-B/32 for MSVD (1,200 train videos, all captions; 670 test videos, all captions),
# with the paper's settings for it (12 frames; paper recipe, 5 epochs).
_base_ = [
    '_base_/models/clip4clip_vit-base-p32.py',
    '_base_/datasets/msvd.py',
    '_base_/schedules/clip4clip_paper.py',
    '_base_/default_runtime.py',
]

model = dict(head=dict(type='SeqTransfHead', embed_dim=512, num_layers=4))
