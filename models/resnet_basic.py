"""A ResNet basic block with a strided 1x1 downsample shortcut (ResNet-18/34 style).

analyze finds: conv1+bn1+ReLU, conv2+bn2 and the downsample conv+BN, all fusible (the strided ones decided as
stride-1 convs at their output size, with a note); the residual add and the last ReLU stay unmatched.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class BasicConfig:
    in_ch: int = 16
    out_ch: int = 32
    stride: int = 2
    batch: int = 2
    size: int = 16


PRESETS = {"tiny": BasicConfig(), "layer2": BasicConfig(in_ch=64, out_ch=128, stride=2, batch=32, size=56)}


def conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cfg: BasicConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(cfg.in_ch, cfg.out_ch, 3, stride=cfg.stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.out_ch)
        self.conv2 = nn.Conv2d(cfg.out_ch, cfg.out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cfg.out_ch)
        self.downsample = conv_bn(cfg.in_ch, cfg.out_ch, 1, cfg.stride)

    def forward(self, x):  # x: (B, in, H, W)
        out = F.relu(self.bn1(self.conv1(x)))  # (B, out, H/s, W/s)
        out = self.bn2(self.conv2(out))  # (B, out, H/s, W/s)
        return F.relu(out + self.downsample(x))  # (B, out, H/s, W/s)


def get_model(cfg: BasicConfig = PRESETS["tiny"]) -> nn.Module:
    torch.manual_seed(0)
    return BasicBlock(cfg).eval()


def get_inputs(cfg: BasicConfig = PRESETS["tiny"]):
    return (torch.randn(cfg.batch, cfg.in_ch, cfg.size, cfg.size, generator=torch.Generator().manual_seed(1)),)
