"""Hugging Face GPT-2 (``transformers.GPT2Model``), random weights, built from a ``GPT2Config``: nothing downloaded.

Two attention implementations of the same model: ``"eager"`` (GPT2Attention's own matmul / scale / causal mask /
softmax / matmul, which analyze can match as causal attention) and ``"sdpa"``
(``F.scaled_dot_product_attention``, already fused).  The model returns ``last_hidden_state``.

  models/zoo/hf_gpt2.py              tiny, eager: 2 layers, hidden 64, 2 x 16 tokens
  models/zoo/hf_gpt2.py:tiny_sdpa    tiny, sdpa
  models/zoo/hf_gpt2.py:bench        GPT-2-small-shaped (768 wide, 12 heads), 4 layers, 8 x 512 tokens, eager
  models/zoo/hf_gpt2.py:bench_sdpa   the same, sdpa
"""

from dataclasses import dataclass, replace

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
    attn_implementation: str = "eager"  # or "sdpa"


PRESETS = {
    "tiny": GPT2Shape(),
    "bench": GPT2Shape(hidden=768, layers=4, heads=12, vocab=50257, positions=1024, batch=8, seq=512),
}


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


def _entry(cfg: GPT2Shape):
    return get_model(cfg), get_inputs(cfg)


def tiny_sdpa():
    return _entry(replace(PRESETS["tiny"], attn_implementation="sdpa"))


def bench():
    """GPT-2-small-shaped, 4 layers, on 8 x 512 tokens, eager attention."""
    return _entry(PRESETS["bench"])


def bench_sdpa():
    return _entry(replace(PRESETS["bench"], attn_implementation="sdpa"))
