# CLIP4Clip seqTransf on ViT-B/32, ActivityNet Captions (64 frames, paragraphs
# of 64 tokens): the paper's global batch of 64 on ONE GPU (the parent
# config's 8 x 8), with the parent's learning rates and schedule (the global
# batch is unchanged). The paper's per-GPU load, 8 videos x 64 frames = 512
# frames per pass, is 2.7 times MSR-VTT's, and the original ran CLIP in
# fp16; here CLIP trains in fp32. So: 8 videos per forward pass
# (micro_batch_size=8) with activation checkpointing of the CLIP towers and
# the seqTransf head (with_cp=True: each block keeps only its input), to
# fit a 24 GB GPU with room to spare. Both are exact: the loss and
# gradients are those of the whole batch of 64.
_base_ = ['./clip4clip-seqTransf_vit-base-p32-res224-clip-pre_8xb8-u64-5e_activitynet-rgb.py']

model = dict(micro_batch_size=8, backbone=dict(with_cp=True),
             head=dict(with_cp=True))
train_dataloader = dict(batch_size=64)
