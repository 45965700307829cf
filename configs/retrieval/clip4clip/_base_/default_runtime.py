default_scope = 'mmclip4clip'
# Safe, checked checkpoint loading and whole-file saving (see CLIP4ClipRunner).
runner_type = 'CLIP4ClipRunner'

default_hooks = dict(
    runtime_info=dict(type='RuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20, ignore_last=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=2,
                    save_best='t2v/R1', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))

log_processor = dict(type='LogProcessor', window_size=20, by_epoch=True)

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)

log_level = 'INFO'
load_from = None
resume = False

# SafeCheckpointHook keeps checkpoints loadable under torch's safe loading
# (weights_only=True); SkipSummaryHook logs what skip_broken skipped.
custom_hooks = [dict(type='SafeCheckpointHook'),
                dict(type='SkipSummaryHook')]
