"""torchvision ConvNeXt-Tiny (``torchvision.models.convnext_tiny(weights=None)``): random weights.

CNBlocks: depthwise 7x7 conv, permute to channels-last, LayerNorm, Linear (4x) + GELU, Linear, layer scale
(multiply), permute back, stochastic depth (identity in eval) and a residual add; downsampling is LayerNorm2d +
conv 2x2 stride 2.  The constructor has no width knob, so the tiny preset is the whole network at 32x32.

  models/zoo/tv_convnext_tiny.py          tiny: 2 x 3 x 32 x 32
  models/zoo/tv_convnext_tiny.py:bench    32 x 3 x 224 x 224
"""

from dataclasses import dataclass

import torch
from _zoolib import images, import_library


@dataclass(frozen=True)
class ConvNeXtShape:
    batch: int = 2
    image: int = 32


PRESETS = {"tiny": ConvNeXtShape(), "bench": ConvNeXtShape(batch=32, image=224)}
REALISTIC_ENTRIES = ("bench",)  # the entry functions of the realistic presets


def get_model(cfg: ConvNeXtShape = PRESETS["tiny"]) -> torch.nn.Module:
    models = import_library("torchvision.models")
    torch.manual_seed(0)
    return models.convnext_tiny(weights=None).eval()  # (B, 3, H, W) -> (B, 1000)


def get_inputs(cfg: ConvNeXtShape = PRESETS["tiny"]):
    return (images(cfg.batch, cfg.image),)


def bench():
    """ConvNeXt-Tiny at batch 32, 224 x 224."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)
