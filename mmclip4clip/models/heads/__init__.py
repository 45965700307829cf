from .loose import LooseHead, MeanPHead, masked_mean
from .temporal import SeqLSTMHead, SeqTransfHead

__all__ = [
    'LooseHead', 'MeanPHead', 'SeqLSTMHead', 'SeqTransfHead', 'masked_mean'
]
