# CLIP4Clip meanP on ViT-B/32, MSR-VTT 9k: the paper's global batch of 128
# on TWO GPUs (2 x 64; the parent config's 8 x 16), with the parent's
# learning rates and schedule (the global batch is unchanged). Each process
# embeds its 64 videos 16 at a time (micro_batch_size=16, the paper's
# per-GPU load of 16 videos x 12 frames: fits a 24 GB GPU without with_cp);
# the loss still compares all 128 captions with all 128 videos and the
# gradients are those of the whole batch (tools/dist_train.sh ... 2).
_base_ = ['./clip4clip_vit-base-p32-res224-clip-pre_8xb16-u12-5e_msrvtt-9k-rgb.py']

model = dict(micro_batch_size=16)
train_dataloader = dict(batch_size=64)
