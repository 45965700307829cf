# The synthetic default with the seqTransf head (frame order matters): the
# comparison with meanP on captions that differ only by motion direction.
_base_ = ['clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb.py']

model = dict(head=dict(type='SeqTransfHead', embed_dim=64, num_layers=4, max_frames=32))
