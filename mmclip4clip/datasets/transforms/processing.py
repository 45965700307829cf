"""Resize and crop frames exactly as CLIP's own preprocessing does."""
from __future__ import annotations

import numpy as np
from mmcv.transforms import BaseTransform
from PIL import Image

from mmclip4clip.registry import TRANSFORMS


def resize_center_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """[H, W, 3] uint8 RGB -> [size, size, 3]: bicubic shorter-side resize
    (long side truncated to an integer) and centre crop (offsets rounded),
    the arithmetic of CLIP's torchvision ``Resize`` + ``CenterCrop`` on PIL
    images, which antialias when shrinking, unlike OpenCV's bicubic.
    """
    h, w = frame.shape[:2]
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    image = Image.fromarray(frame)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)))


@TRANSFORMS.register_module()
class CLIPResizeCrop(BaseTransform):
    """Bicubic resize of the shorter side to ``size``, then centre crop.

    Required key: ``imgs`` (list of [H, W, 3] uint8 RGB). Modified: ``imgs``,
    ``img_shape``.

    Deviation: mmaction2's ``Resize`` + ``CenterCrop`` use OpenCV without
    antialiasing and round differently, so they do not reproduce CLIP's
    input pixels; this transform does.
    """

    def __init__(self, size: int = 224) -> None:
        self.size = size

    def transform(self, results: dict) -> dict:
        results['imgs'] = [resize_center_crop(f, self.size)
                           for f in results['imgs']]
        results['img_shape'] = (self.size, self.size)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(size={self.size})'
