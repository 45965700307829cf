# The synthetic default with the seqLSTM head (frame order matters): the
# comparison with meanP on captions that differ only by motion direction.
_base_ = ['clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb.py']

model = dict(head=dict(type='SeqLSTMHead', embed_dim=64))

# Start from the synthetic meanP model, as the paper's heads start from
# pretrained CLIP (train the meanP config first). From a random CLIP the
# frame features barely change along a clip, and no head learns direction.
load_from = ('work_dirs/clip4clip_tiny-p4-res32-scratch_1xb32-u8-30e_synthetic-rgb/'
             'epoch_30.pth')
