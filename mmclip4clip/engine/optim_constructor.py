"""Optimiser parameter groups of the CLIP4Clip recipe
(docs/training.md#recipe).

The original trains the new modules (the similarity head) at ``lr`` and every
CLIP parameter at ``lr * coef_lr``, with weight decay on weights only. On top
of mmengine's usual ``paramwise_cfg`` rules (``norm_decay_mult``,
``bias_decay_mult``...), :class:`CLIP4ClipOptimWrapperConstructor` applies
``coef_lr`` to the backbone; mmengine's own ``custom_keys`` cannot do this,
because a parameter matching a custom key skips the norm and bias rules.
"""
from __future__ import annotations

from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from mmclip4clip.registry import OPTIM_WRAPPER_CONSTRUCTORS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class CLIP4ClipOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor plus a learning-rate factor for CLIP.

    ``paramwise_cfg`` accepts, besides mmengine's keys:

    - ``coef_lr`` (default 1.0): multiplies the learning rate of every
      parameter under ``backbone_prefix`` (CLIP, including the 3-D patch
      conv), after the other rules;
    - ``backbone_prefix`` (default ``'backbone'``): the model attribute
      holding CLIP.

    Frozen parameters (``requires_grad=False``) get no group, as in mmengine.
    """

    def __init__(self, optim_wrapper_cfg: dict,
                 paramwise_cfg: dict | None = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        self.coef_lr = float(paramwise_cfg.pop('coef_lr', 1.0))
        self.backbone_prefix = paramwise_cfg.pop('backbone_prefix', 'backbone')
        if self.coef_lr != 1.0 and not paramwise_cfg:
            # mmengine builds per-parameter groups (and so calls add_params)
            # only for a non-empty paramwise_cfg; this key changes nothing.
            paramwise_cfg['bypass_duplicate'] = False
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params: list[dict], module: nn.Module,
                   prefix: str = '', is_dcn_module=None) -> None:
        super().add_params(params, module, prefix, is_dcn_module)
        if prefix or self.coef_lr == 1.0:
            return  # only the top-level call rescales, once
        backbone = getattr(module, self.backbone_prefix, None)
        if backbone is None:
            raise AttributeError(
                f'coef_lr is set but the model has no {self.backbone_prefix!r}'
                ' attribute; set paramwise_cfg.backbone_prefix')
        clip_params = {id(p) for p in backbone.parameters()}
        for group in params:
            if id(group['params'][0]) in clip_params:
                group['lr'] = group.get('lr', self.base_lr) * self.coef_lr
