# The CLIP4Clip paper's recipe (docs/training.md#recipe): AdamW, lr 1e-4 for
# the new modules and lr * coef_lr = 1e-7 for every CLIP parameter, weight
# decay 0.2 on weights only (none on norms and biases), warm-up over the first
# 10% then cosine decay, gradient clipping at norm 1.0, 5 epochs, global batch
# 128. Deviations: the original's BertAdam has no bias correction, its cosine
# runs over the whole schedule (0.5 (1 + cos(pi x)) after warm-up, a small step
# at the end of warm-up) where this one runs over the remaining 90%, and it
# keeps CLIP's weights in fp16 (so most 1e-7 updates round away); here CLIP
# trains in fp32 (see the README).
max_epochs = 5
warmup_epochs = 0.5  # 10% of 5 epochs
base_lr = 1e-4
coef_lr = 1e-3

train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs,
                 val_begin=1, val_interval=1)
val_cfg = dict(type='RetrievalValLoop')
test_cfg = dict(type='RetrievalTestLoop')

optim_wrapper = dict(
    type='OptimWrapper',
    constructor='CLIP4ClipOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=base_lr, betas=(0.9, 0.98), eps=1e-6,
                   weight_decay=0.2),
    paramwise_cfg=dict(coef_lr=coef_lr, norm_decay_mult=0.0,
                       bias_decay_mult=0.0),
    clip_grad=dict(max_norm=1.0))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0,
         end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs,
         eta_min=0, by_epoch=True, begin=warmup_epochs, end=max_epochs,
         convert_to_iter_based=True),
]

auto_scale_lr = dict(enable=False, base_batch_size=128)
