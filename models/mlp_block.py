"""A transformer feed-forward block, post-norm (BERT style): LayerNorm(x + fc2(GELU(fc1(x)))).

analyze finds: fc1+GELU (fusible), fc2 (bias already in the GEMM), the residual add + LayerNorm (fusible: the sum
is read only by the LayerNorm).
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class MLPConfig:
    dim: int = 64
    hidden: int = 256
    batch: int = 2
    tokens: int = 32


PRESETS = {"tiny": MLPConfig(), "base": MLPConfig(dim=768, hidden=3072, batch=8, tokens=512)}


class FeedForward(nn.Module):
    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, cfg.dim)

    def forward(self, x):  # x: (B, T, dim)
        h = F.gelu(self.fc1(x))  # (B, T, hidden)
        return self.fc2(h)  # (B, T, dim)


class MLPBlock(nn.Module):
    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.ffn = FeedForward(cfg)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, x):  # x: (B, T, dim)
        return self.norm(x + self.ffn(x))  # (B, T, dim)


def get_model(cfg: MLPConfig = PRESETS["tiny"]) -> nn.Module:
    torch.manual_seed(0)
    return MLPBlock(cfg).eval()


def get_inputs(cfg: MLPConfig = PRESETS["tiny"]):
    return (torch.randn(cfg.batch, cfg.tokens, cfg.dim, generator=torch.Generator().manual_seed(1)),)
