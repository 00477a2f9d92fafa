"""torchvision MobileNetV3-Large (``torchvision.models.mobilenet_v3_large(weights=None)``): random weights.

Inverted residuals: pointwise conv+BN+Hardswish/ReLU, depthwise conv+BN+activation, squeeze-excitation (avg pool,
conv+ReLU, conv, Hardsigmoid, multiply), pointwise conv+BN.  The tiny preset narrows every layer with the
constructor's own ``width_mult`` and runs at 32x32.

  models/zoo/tv_mobilenet_v3_large.py          tiny: width_mult 0.5, 2 x 3 x 32 x 32
  models/zoo/tv_mobilenet_v3_large.py:bench    MobileNetV3-Large as published, 32 x 3 x 224 x 224
"""

from dataclasses import dataclass

import torch
from _zoolib import images, import_library


@dataclass(frozen=True)
class MobileNetV3Shape:
    width_mult: float = 0.5
    batch: int = 2
    image: int = 32


PRESETS = {"tiny": MobileNetV3Shape(), "bench": MobileNetV3Shape(width_mult=1.0, batch=32, image=224)}
REALISTIC_ENTRIES = ("bench",)  # the entry functions of the realistic presets


def get_model(cfg: MobileNetV3Shape = PRESETS["tiny"]) -> torch.nn.Module:
    models = import_library("torchvision.models")
    torch.manual_seed(0)
    return models.mobilenet_v3_large(weights=None, width_mult=cfg.width_mult).eval()  # (B, 3, H, W) -> (B, 1000)


def get_inputs(cfg: MobileNetV3Shape = PRESETS["tiny"]):
    return (images(cfg.batch, cfg.image),)


def bench():
    """MobileNetV3-Large at batch 32, 224 x 224."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)
