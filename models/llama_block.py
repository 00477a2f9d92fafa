"""Llama-style blocks, written by hand (no transformers): RMSNorm, grouped-query attention (k and v narrower than q),
eager causal attention, a gated MLP.  Rotary embeddings are left out: they touch q and k after the projections and
change nothing the fusions here look at.

analyze finds, per block: q/k/v as one sibling site (``sibling_gemm3``; ``_bias`` with Qwen2-style biases), gate/up
with the activation and product as one gated site (``gated_mlp_silu``), the hand-written attention and the two
RMSNorms; o_proj and down_proj are lone bias-free GEMMs, no site.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class LlamaConfig:
    dim: int = 32
    n_head: int = 4
    n_kv_head: int = 2  # grouped-query attention: k and v are n_kv_head * head_dim wide, q is dim wide
    hidden: int = 64  # the MLP's width
    n_layer: int = 1
    qkv_bias: str = "none"  # "none" (Llama), "all" (Qwen2), "q" (q only: a mixed group)
    mlp_bias: bool = False
    act: str = "silu"  # the MLP's gate: silu (SwiGLU), gelu, gelu_tanh, gelu_tanh_written (GeGLU)
    batch: int = 2
    tokens: int = 8


# "llama": the shape of Llama-3.2-1B (2048 wide, 32 heads, 8 kv heads, MLP 8192), 4 blocks, 4 x 512 tokens.
PRESETS = {"tiny": LlamaConfig(),
           "llama": LlamaConfig(dim=2048, n_head=32, n_kv_head=8, hidden=8192, n_layer=4, batch=4, tokens=512)}


def gelu_tanh_written(x):  # GPT-2's NewGELU: GELU(tanh) written out in elementwise ops
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTS = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "gelu_tanh_written": gelu_tanh_written}


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):  # x: (B, T, C)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.h, self.kv, self.d = cfg.n_head, cfg.n_kv_head, cfg.dim // cfg.n_head
        self.q_proj = nn.Linear(cfg.dim, self.h * self.d, bias=cfg.qkv_bias in ("all", "q"))
        self.k_proj = nn.Linear(cfg.dim, self.kv * self.d, bias=cfg.qkv_bias == "all")
        self.v_proj = nn.Linear(cfg.dim, self.kv * self.d, bias=cfg.qkv_bias == "all")
        self.o_proj = nn.Linear(self.h * self.d, cfg.dim, bias=False)

    def forward(self, x):  # x: (B, T, C)
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.d).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.kv, self.d).transpose(1, 2)  # (B, KV, T, D)
        v = self.v_proj(x).view(B, T, self.kv, self.d).transpose(1, 2)
        k, v = k.repeat_interleave(self.h // self.kv, 1), v.repeat_interleave(self.h // self.kv, 1)  # (B, H, T, D)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.d)  # (B, H, T, T)
        att = torch.softmax(att.masked_fill(~causal, float("-inf")), dim=-1)
        return self.o_proj((att @ v).transpose(1, 2).reshape(B, T, -1))


class GatedMLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.hidden, cfg.dim, bias=False)
        self.act = ACTS[cfg.act]

    def forward(self, x):  # x: (B, T, C); (B, T, hidden) inside
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(cfg.dim), RMSNorm(cfg.dim)
        self.self_attn, self.mlp = Attention(cfg), GatedMLP(cfg)

    def forward(self, x):  # x: (B, T, C)
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class Stack(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))

    def forward(self, x):  # x: (B, T, C)
        for layer in self.layers:
            x = layer(x)
        return x


def get_model(cfg: LlamaConfig = PRESETS["tiny"]) -> nn.Module:
    torch.manual_seed(0)
    return Stack(cfg).eval()


def get_inputs(cfg: LlamaConfig = PRESETS["tiny"]):
    return (torch.randn(cfg.batch, cfg.tokens, cfg.dim, generator=torch.Generator().manual_seed(1)),)


def llama():
    """`analyze models/llama_block.py:llama`: 4 Llama-3.2-1B-shaped blocks on 4 x 512 tokens (a GPU's job)."""
    cfg = PRESETS["llama"]
    return get_model(cfg), get_inputs(cfg)
