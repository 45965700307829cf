from .clip_text_tower import ClipTextTower, clip_text_tower
from .cross_blocks import CrossTransformer, QuickGELU, ResidualAttentionBlock
from .loose import LooseHead, MeanPHead, masked_mean
from .mmaction2_adapters import MMAction2MeanHead, MMAction2TransformerHead
from .temporal import SeqLSTMHead, SeqTransfHead
from .tight import TightTransfHead

__all__ = [
    'ClipTextTower', 'CrossTransformer', 'LooseHead', 'MeanPHead', 'MMAction2MeanHead',
    'MMAction2TransformerHead', 'QuickGELU',
    'ResidualAttentionBlock', 'SeqLSTMHead', 'SeqTransfHead', 'TightTransfHead',
    'clip_text_tower', 'masked_mean'
]
