from .cross_blocks import CrossTransformer, QuickGELU, ResidualAttentionBlock
from .loose import LooseHead, MeanPHead, masked_mean
from .temporal import SeqLSTMHead, SeqTransfHead
from .tight import TightTransfHead

__all__ = [
    'CrossTransformer', 'LooseHead', 'MeanPHead', 'QuickGELU',
    'ResidualAttentionBlock', 'SeqLSTMHead', 'SeqTransfHead', 'TightTransfHead',
    'masked_mean'
]
