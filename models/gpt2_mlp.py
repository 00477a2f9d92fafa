"""The MLP of Hugging Face's GPT-2, as its code writes it: Conv1D layers (``addmm(b, x, W)`` with W stored (K, N))
and NewGELUActivation, the tanh GELU written out in eight elementwise ops.

analyze finds: c_fc + the written-out GELU(tanh) as one linear_bias_gelu_tanh site (the activation recognised by
value), and c_proj as a linear whose bias is already in the GEMM.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class MLPConfig:
    dim: int = 64
    batch: int = 2
    tokens: int = 32


PRESETS = {"tiny": MLPConfig(), "gpt2": MLPConfig(dim=768, batch=8, tokens=1024)}


class Conv1D(nn.Module):
    """transformers.pytorch_utils.Conv1D: a linear layer with its weight transposed."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x):  # x: (B, T, nx)
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)  # (B*T, nf)
        return x.view(size_out)


class NewGELUActivation(nn.Module):
    """transformers.activations.NewGELUActivation (the GELU of the original GPT-2 code)."""

    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GPT2MLP(nn.Module):
    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.c_fc, self.c_proj = Conv1D(4 * cfg.dim, cfg.dim), Conv1D(cfg.dim, 4 * cfg.dim)
        self.act, self.dropout = NewGELUActivation(), nn.Dropout(0.1)

    def forward(self, x):  # x: (B, T, C)
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))  # (B, T, 4C) inside


def get_model(cfg: MLPConfig = PRESETS["tiny"]) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        model = GPT2MLP(cfg).eval()
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(std=0.02)  # a trained model's biases are not zero
    return model


def get_inputs(cfg: MLPConfig = PRESETS["tiny"]):
    return (torch.randn(cfg.batch, cfg.tokens, cfg.dim, generator=torch.Generator().manual_seed(1)),)


def gpt2():
    """`analyze models/gpt2_mlp.py:gpt2`: the GPT-2-small MLP (768 -> 3072 -> 768) on 8 x 1024 tokens."""
    cfg = PRESETS["gpt2"]
    return get_model(cfg), get_inputs(cfg)
