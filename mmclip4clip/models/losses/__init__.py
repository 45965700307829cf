from .gather import all_gather_with_grad
from .infonce import SymmetricInfoNCELoss

__all__ = ['SymmetricInfoNCELoss', 'all_gather_with_grad']
