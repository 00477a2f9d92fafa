"""A GPT-2 style transformer block, pre-norm, attention written by hand with a causal mask.

analyze finds: the qkv, attention-projection and MLP-projection linears (bias already in the GEMM), the hand-written
causal attention (fusible into SDPA), fc+GELU(tanh) (fusible), and the residual add + ln_2, refused: the sum is
also read by the second residual add, and the fused kernel does not write it out.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    dim: int = 64
    n_head: int = 4
    block_size: int = 32  # the longest sequence (size of the causal mask)
    dropout: float = 0.1
    batch: int = 2
    tokens: int = 32


PRESETS = {"tiny": GPTConfig(), "gpt2": GPTConfig(dim=768, n_head=12, block_size=1024, batch=8, tokens=1024)}


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.dim = cfg.n_head, cfg.dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.attn_drop = nn.Dropout(cfg.dropout)
        mask = torch.tril(torch.ones(cfg.block_size, cfg.block_size)).view(1, 1, cfg.block_size, cfg.block_size)
        self.register_buffer("mask", mask)

    def forward(self, x):  # x: (B, T, C)
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(self.dim, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, H, T, T)
        att = att.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf"))
        att = self.attn_drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.dim, 4 * cfg.dim)
        self.proj = nn.Linear(4 * cfg.dim, cfg.dim)

    def forward(self, x):  # x: (B, T, C)
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))  # (B, T, 4C) inside


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn, self.mlp = CausalSelfAttention(cfg), MLP(cfg)

    def forward(self, x):  # x: (B, T, C)
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def get_model(cfg: GPTConfig = PRESETS["tiny"]) -> nn.Module:
    torch.manual_seed(0)
    return Block(cfg).eval()


def get_inputs(cfg: GPTConfig = PRESETS["tiny"]):
    return (torch.randn(cfg.batch, cfg.tokens, cfg.dim, generator=torch.Generator().manual_seed(1)),)


def gpt2():
    """`analyze models/transformer_block.py:gpt2`: one GPT-2-small block (768 wide, 12 heads) on 8 x 1024 tokens."""
    cfg = PRESETS["gpt2"]
    return get_model(cfg), get_inputs(cfg)
