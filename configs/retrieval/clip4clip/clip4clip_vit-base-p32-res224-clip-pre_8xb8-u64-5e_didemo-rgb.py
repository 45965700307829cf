# CLIP4Clip meanP on ViT-B/32 for DiDeMo as video-paragraph retrieval,
# with the paper's settings for it (64 frames; paper recipe, 5 epochs).
_base_ = [
    '_base_/models/clip4clip_vit-base-p32.py',
    '_base_/datasets/didemo.py',
    '_base_/schedules/clip4clip_paper.py',
    '_base_/default_runtime.py',
]

# meanP: the model base's head.
auto_scale_lr = dict(base_batch_size=64)
