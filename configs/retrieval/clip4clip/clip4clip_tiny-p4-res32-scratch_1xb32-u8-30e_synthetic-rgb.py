# The built-in default: a tiny CLIP4Clip (meanP) trained from scratch on the
# synthetic dataset, on a CPU. Make the data first:
#   python tools/data/make_synthetic_dataset.py --out data/synthetic
_base_ = [
    '_base_/models/clip4clip_tiny-scratch.py',
    '_base_/datasets/synthetic.py',
    '_base_/schedules/adamw_warmup_cosine.py',
    '_base_/default_runtime.py',
]

max_epochs = 30
train_cfg = dict(max_epochs=max_epochs, val_interval=10)
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0,
         end=2, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 2, eta_min=1e-5,
         by_epoch=True, begin=2, end=max_epochs, convert_to_iter_based=True),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=10))
randomness = dict(seed=0)
