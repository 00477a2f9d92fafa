"""A ResNet bottleneck block (ResNet-50 style): 1x1 reduce, 3x3, 1x1 expand, identity shortcut.

analyze finds: conv1+bn1+ReLU, conv2+bn2+ReLU, conv3+bn3, all fusible; the residual add and last ReLU stay
unmatched.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class BottleneckConfig:
    channels: int = 64  # in and out (identity shortcut)
    width: int = 16  # the bottleneck's inner width
    batch: int = 2
    size: int = 14


PRESETS = {"tiny": BottleneckConfig(), "layer3": BottleneckConfig(channels=1024, width=256, batch=32, size=14)}


class Bottleneck(nn.Module):
    def __init__(self, cfg: BottleneckConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(cfg.channels, cfg.width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.width)
        self.conv2 = nn.Conv2d(cfg.width, cfg.width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cfg.width)
        self.conv3 = nn.Conv2d(cfg.width, cfg.channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cfg.channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):  # x: (B, C, H, W)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, width, H, W)
        out = self.relu(self.bn2(self.conv2(out)))  # (B, width, H, W)
        out = self.bn3(self.conv3(out))  # (B, C, H, W)
        return self.relu(out + x)  # (B, C, H, W)


def get_model(cfg: BottleneckConfig = PRESETS["tiny"]) -> nn.Module:
    torch.manual_seed(0)
    return Bottleneck(cfg).eval()


def get_inputs(cfg: BottleneckConfig = PRESETS["tiny"]):
    return (torch.randn(cfg.batch, cfg.channels, cfg.size, cfg.size, generator=torch.Generator().manual_seed(1)),)
