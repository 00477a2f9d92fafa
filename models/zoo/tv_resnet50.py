"""torchvision ResNet-50 (``torchvision.models.resnet50(weights=None)``): random weights, nothing downloaded.

Bottleneck blocks of conv1x1+BN+ReLU, conv3x3+BN+ReLU, conv1x1+BN, a residual add and ReLU; the downsample path is
conv1x1 (stride 2)+BN.  The tiny preset narrows the bottlenecks with the constructor's own ``width_per_group``
(how wide_resnet50_2 is built) and runs at 32x32.

  models/zoo/tv_resnet50.py          tiny: width_per_group 16, 2 x 3 x 32 x 32
  models/zoo/tv_resnet50.py:bench    ResNet-50 as published, 32 x 3 x 224 x 224
"""

from dataclasses import dataclass

import torch
from _zoolib import images, import_library


@dataclass(frozen=True)
class ResNet50Shape:
    width_per_group: int = 16  # 64 in ResNet-50: the bottleneck width of the first stage
    batch: int = 2
    image: int = 32


PRESETS = {"tiny": ResNet50Shape(), "bench": ResNet50Shape(width_per_group=64, batch=32, image=224)}
REALISTIC_ENTRIES = ("bench",)  # the entry functions of the realistic presets


def get_model(cfg: ResNet50Shape = PRESETS["tiny"]) -> torch.nn.Module:
    models = import_library("torchvision.models")
    torch.manual_seed(0)
    return models.resnet50(weights=None, width_per_group=cfg.width_per_group).eval()  # (B, 3, H, W) -> (B, 1000)


def get_inputs(cfg: ResNet50Shape = PRESETS["tiny"]):
    return (images(cfg.batch, cfg.image),)


def bench():
    """ResNet-50 at batch 32, 224 x 224."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)
