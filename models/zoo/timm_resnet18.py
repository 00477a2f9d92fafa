"""timm ResNet-18 (``timm.create_model("resnet18", pretrained=False)``): random weights, timm's own ResNet class.

BasicBlocks of conv3x3+BN+ReLU, conv3x3+BN, a residual add and ReLU; the downsample path is conv1x1 (stride 2)+BN.
ResNet-18 is small already: the tiny preset is the whole network at 32x32.

  models/zoo/timm_resnet18.py          tiny: 2 x 3 x 32 x 32
  models/zoo/timm_resnet18.py:bench    32 x 3 x 224 x 224
"""

from dataclasses import dataclass

import torch
from _zoolib import images, import_library


@dataclass(frozen=True)
class ResNet18Shape:
    batch: int = 2
    image: int = 32


PRESETS = {"tiny": ResNet18Shape(), "bench": ResNet18Shape(batch=32, image=224)}
REALISTIC_ENTRIES = ("bench",)  # the entry functions of the realistic presets


def get_model(cfg: ResNet18Shape = PRESETS["tiny"]) -> torch.nn.Module:
    timm = import_library("timm")
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False).eval()  # (B, 3, H, W) -> (B, 1000)


def get_inputs(cfg: ResNet18Shape = PRESETS["tiny"]):
    return (images(cfg.batch, cfg.image),)


def bench():
    """ResNet-18 at batch 32, 224 x 224."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)
