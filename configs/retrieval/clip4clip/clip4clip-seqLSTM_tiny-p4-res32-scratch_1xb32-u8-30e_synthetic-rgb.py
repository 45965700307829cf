# The synthetic default with the seqLSTM head (frame order matters): the
# comparison with meanP on captions that differ only by motion direction.
_base_ = ['clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb.py']

model = dict(head=dict(type='SeqLSTMHead', embed_dim=64))
