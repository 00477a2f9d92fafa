"""A gated MLP whose branch depends on the data: torch.export cannot capture it as one graph.

analyze falls back to Dynamo and reports the graph break; it finds fc_in+ReLU in the first subgraph and, in the
branch these inputs take, fc_hi+GELU in the second.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GatedConfig:
    dim: int = 32
    hidden: int = 64
    batch: int = 4


PRESETS = {"tiny": GatedConfig()}


class GatedMLP(nn.Module):
    def __init__(self, cfg: GatedConfig):
        super().__init__()
        self.fc_in = nn.Linear(cfg.dim, cfg.hidden)
        self.fc_hi = nn.Linear(cfg.hidden, cfg.dim)
        self.fc_lo = nn.Linear(cfg.hidden, cfg.dim)

    def forward(self, x):  # x: (B, dim)
        h = F.relu(self.fc_in(x))  # (B, hidden)
        if h.mean() > 0:  # data-dependent: a graph break
            return F.gelu(self.fc_hi(h))  # (B, dim)
        return self.fc_lo(h)


def get_model(cfg: GatedConfig = PRESETS["tiny"]) -> nn.Module:
    torch.manual_seed(0)
    return GatedMLP(cfg).eval()


def get_inputs(cfg: GatedConfig = PRESETS["tiny"]):
    return (torch.randn(cfg.batch, cfg.dim, generator=torch.Generator().manual_seed(1)),)
