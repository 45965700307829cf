# The synthetic default with the tightTransf cross-encoder: every (caption,
# video) pair of a batch goes through the cross blocks; evaluation scores
# all pairs in chunks of `chunk_size`, which sets its peak memory.
_base_ = ['clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb.py']

model = dict(head=dict(type='TightTransfHead', embed_dim=64, num_layers=2,
                       num_heads=2, max_positions=32, chunk_size=2048))

# Start from the synthetic meanP model, as the paper's heads start from
# pretrained CLIP (train the meanP config first). From a random CLIP the
# frame features barely change along a clip, and no head learns direction.
load_from = ('work_dirs/clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb/'
             'epoch_30.pth')
