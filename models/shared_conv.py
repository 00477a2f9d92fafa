"""A siamese stem: one conv applied to an image and to its mirror image, each path with its own BatchNorm.

Folding bn_a into the shared conv would silently change path b (PyTorch's torch.fx.experimental.optimization.fuse
does exactly that, issue 104593).  analyze refuses both conv+BN sites of the shared conv and finds the unshared
head conv+BN+ReLU fusible.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class SharedConfig:
    in_ch: int = 3
    ch: int = 16
    out_ch: int = 8
    batch: int = 2
    size: int = 16


PRESETS = {"tiny": SharedConfig()}


class SiameseStem(nn.Module):
    def __init__(self, cfg: SharedConfig):
        super().__init__()
        self.conv = nn.Conv2d(cfg.in_ch, cfg.ch, 3, padding=1, bias=False)  # shared by both paths
        self.bn_a, self.bn_b = nn.BatchNorm2d(cfg.ch), nn.BatchNorm2d(cfg.ch)
        self.head = nn.Conv2d(cfg.ch, cfg.out_ch, 1, bias=False)
        self.bn_head = nn.BatchNorm2d(cfg.out_ch)

    def forward(self, x):  # x: (B, in, H, W)
        a = F.relu(self.bn_a(self.conv(x)))  # (B, ch, H, W)
        b = self.bn_b(self.conv(x.flip(-1)))  # (B, ch, H, W): the same weights on the mirror image
        return F.relu(self.bn_head(self.head(a + b)))  # (B, out, H, W)


def get_model(cfg: SharedConfig = PRESETS["tiny"]) -> nn.Module:
    torch.manual_seed(0)
    model = SiameseStem(cfg).eval()
    with torch.no_grad():  # non-trivial statistics, so a wrong fold shows in the output
        for bn in (model.bn_a, model.bn_b, model.bn_head):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return model


def get_inputs(cfg: SharedConfig = PRESETS["tiny"]):
    return (torch.randn(cfg.batch, cfg.in_ch, cfg.size, cfg.size, generator=torch.Generator().manual_seed(1)),)
