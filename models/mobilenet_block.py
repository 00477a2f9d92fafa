"""A MobileNet (v1) depthwise-separable block: 3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv + BN + ReLU.

analyze finds: the depthwise conv+BN+ReLU (G = channels) and the pointwise conv+BN+ReLU, both fusible.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class MobileConfig:
    in_ch: int = 32
    out_ch: int = 64
    batch: int = 2
    size: int = 16


PRESETS = {"tiny": MobileConfig(), "stage3": MobileConfig(in_ch=256, out_ch=256, batch=32, size=28)}


class DepthwiseSeparable(nn.Module):
    def __init__(self, cfg: MobileConfig):
        super().__init__()
        self.dw = nn.Conv2d(cfg.in_ch, cfg.in_ch, 3, padding=1, groups=cfg.in_ch, bias=False)
        self.bn_dw = nn.BatchNorm2d(cfg.in_ch)
        self.pw = nn.Conv2d(cfg.in_ch, cfg.out_ch, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(cfg.out_ch)
        self.act = nn.ReLU()

    def forward(self, x):  # x: (B, in, H, W)
        x = self.act(self.bn_dw(self.dw(x)))  # (B, in, H, W), one 3x3 filter per channel
        return self.act(self.bn_pw(self.pw(x)))  # (B, out, H, W)


def get_model(cfg: MobileConfig = PRESETS["tiny"]) -> nn.Module:
    torch.manual_seed(0)
    return DepthwiseSeparable(cfg).eval()


def get_inputs(cfg: MobileConfig = PRESETS["tiny"]):
    return (torch.randn(cfg.batch, cfg.in_ch, cfg.size, cfg.size, generator=torch.Generator().manual_seed(1)),)
