from .clip_text_tower import ClipTextTower, clip_text_tower
from .cross_blocks import CrossAttention, CrossTransformer, ResidualAttentionBlock
from .loose import EmbeddingHead, LooseHead, MeanPHead, masked_mean
from .mmaction2_adapters import MMAction2MeanHead, MMAction2TransformerHead
from .temporal import SeqLSTMHead, SeqTransfHead
from .tight import TightTransfHead

__all__ = [
    'ClipTextTower', 'CrossAttention', 'CrossTransformer', 'EmbeddingHead',
    'LooseHead', 'MeanPHead', 'MMAction2MeanHead', 'MMAction2TransformerHead',
    'ResidualAttentionBlock', 'SeqLSTMHead', 'SeqTransfHead', 'TightTransfHead',
    'clip_text_tower', 'masked_mean'
]
