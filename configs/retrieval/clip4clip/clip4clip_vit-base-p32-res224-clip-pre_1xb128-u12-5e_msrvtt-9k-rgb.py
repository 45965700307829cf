# CLIP4Clip meanP on ViT-B/32, MSR-VTT 9k: the paper's global batch of 128
# on ONE GPU (the parent config's 8 x 16), with the parent's learning rates
# and schedule (lr is not rescaled: the global batch is unchanged).
# micro_batch_size=16: each training step embeds the 128 videos 16 at a
# time and still trains on the loss and gradients of the whole batch
# (gradient caching, exact; see the README). 16 videos x 12 frames per
# forward pass is the paper's per-GPU load, so a micro-batch fits a 24 GB
# GPU without activation checkpointing. with_cp=True would fit larger
# micro-batches, but it costs one more forward pass of the towers per step
# and a pass of 192 frames already keeps a GPU busy, so it stays off.
_base_ = ['./clip4clip_vit-base-p32-res224-clip-pre_8xb16-u12-5e_msrvtt-9k-rgb.py']

model = dict(micro_batch_size=16)
train_dataloader = dict(batch_size=128)
