from .loose import LooseHead, MeanPHead, masked_mean

__all__ = ['LooseHead', 'MeanPHead', 'masked_mean']
