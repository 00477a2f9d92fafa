"""torchvision EfficientNet-B0 (``torchvision.models.efficientnet_b0(weights=None)``): random weights.

MBConv blocks: pointwise conv+BN+SiLU, depthwise conv+BN+SiLU, squeeze-excitation (avg pool, conv+SiLU, conv,
sigmoid, multiply), pointwise conv+BN, stochastic depth (identity in eval) and a residual add.  The constructor has
no width knob (B0 is the narrowest), so the tiny preset is the whole network at 32x32.

  models/zoo/tv_efficientnet_b0.py          tiny: 2 x 3 x 32 x 32
  models/zoo/tv_efficientnet_b0.py:bench    32 x 3 x 224 x 224
"""

from dataclasses import dataclass

import torch
from _zoolib import images, import_library


@dataclass(frozen=True)
class EfficientNetShape:
    batch: int = 2
    image: int = 32


PRESETS = {"tiny": EfficientNetShape(), "bench": EfficientNetShape(batch=32, image=224)}
REALISTIC_ENTRIES = ("bench",)  # the entry functions of the realistic presets


def get_model(cfg: EfficientNetShape = PRESETS["tiny"]) -> torch.nn.Module:
    models = import_library("torchvision.models")
    torch.manual_seed(0)
    return models.efficientnet_b0(weights=None).eval()  # (B, 3, H, W) -> (B, 1000)


def get_inputs(cfg: EfficientNetShape = PRESETS["tiny"]):
    return (images(cfg.batch, cfg.image),)


def bench():
    """EfficientNet-B0 at batch 32, 224 x 224."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)
