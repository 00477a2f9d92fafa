"""Hugging Face GPT-2 (``transformers.GPT2Model``), random weights, built from a ``GPT2Config``: nothing downloaded.

Eager attention (``attn_implementation="eager"``): GPT2Attention's own matmul, scale, additive causal mask, softmax,
cast to value's dtype, dropout and matmul, which analyze matches as causal attention.  hf_gpt2_sdpa.py is the same
model with ``F.scaled_dot_product_attention`` (already fused).  The model returns ``last_hidden_state``.

  models/zoo/hf_gpt2.py          tiny: 2 layers, hidden 64, 2 heads, 2 x 16 tokens
  models/zoo/hf_gpt2.py:bench    GPT-2-small-shaped (768 wide, 12 heads, vocab 50257), 4 layers, 8 x 512 tokens
"""

from dataclasses import dataclass

import torch
from _zoolib import LastHiddenState, import_library, token_ids


@dataclass(frozen=True)
class GPT2Shape:
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    vocab: int = 256
    positions: int = 64
    batch: int = 2
    seq: int = 16
    attn_implementation: str = "eager"  # or "sdpa" (hf_gpt2_sdpa.py)


PRESETS = {
    "tiny": GPT2Shape(),
    "bench": GPT2Shape(hidden=768, layers=4, heads=12, vocab=50257, positions=1024, batch=8, seq=512),
}
REALISTIC_ENTRIES = ("bench",)  # the entry functions of the realistic presets


def get_model(cfg: GPT2Shape = PRESETS["tiny"]) -> torch.nn.Module:
    transformers = import_library("transformers")
    config = transformers.GPT2Config(
        n_embd=cfg.hidden, n_layer=cfg.layers, n_head=cfg.heads, vocab_size=cfg.vocab, n_positions=cfg.positions,
        bos_token_id=cfg.vocab - 1, eos_token_id=cfg.vocab - 1, use_cache=False,
        attn_implementation=cfg.attn_implementation)
    torch.manual_seed(0)
    return LastHiddenState(transformers.GPT2Model(config)).eval()  # (B, T) ids -> (B, T, hidden)


def get_inputs(cfg: GPT2Shape = PRESETS["tiny"]):
    return (token_ids(cfg.batch, cfg.seq, cfg.vocab),)


def bench():
    """GPT-2-small-shaped, 4 layers, on 8 x 512 tokens."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)
