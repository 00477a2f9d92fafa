"""Hugging Face Qwen2 (``transformers.Qwen2Model``), random weights, built from a ``Qwen2Config``: nothing downloaded.

Llama's layer with biases on the q/k/v projections: RMSNorm, q/k/v (with bias) and o projections, rotary
embeddings, grouped-query attention through ``F.scaled_dot_product_attention`` (``"sdpa"``), RMSNorm, SwiGLU MLP.
The model returns ``last_hidden_state``, with no KV cache.

  models/zoo/hf_qwen2.py           tiny: 2 layers, hidden 64, 4 heads / 2 KV heads, 2 x 16 tokens
  models/zoo/hf_qwen2.py:bench     Qwen2-0.5B-shaped (hidden 896, 14 heads / 2 KV heads, MLP 4864, vocab 151936),
                                   4 layers, 4 x 512 tokens
  models/zoo/hf_qwen2.py:decode    the same model on 8 x 1 token
"""

from dataclasses import replace

import torch
from _zoolib import token_ids
from hf_llama import LlamaShape, decoder  # Qwen2's config has Llama's fields (and biases on q/k/v by itself)

Qwen2Shape = LlamaShape

PRESETS = {
    "tiny": Qwen2Shape(),
    "bench": Qwen2Shape(hidden=896, layers=4, heads=14, kv_heads=2, mlp=4864, vocab=151936, positions=2048,
                        batch=4, seq=512),
}
PRESETS["decode"] = replace(PRESETS["bench"], batch=8, seq=1)
REALISTIC_ENTRIES = ("bench", "decode")  # the entry functions of the realistic presets


def get_model(cfg: Qwen2Shape = PRESETS["tiny"]) -> torch.nn.Module:
    return decoder(cfg, "Qwen2")


def get_inputs(cfg: Qwen2Shape = PRESETS["tiny"]):
    return (token_ids(cfg.batch, cfg.seq, cfg.vocab),)


def bench():
    """4 Qwen2-0.5B-shaped layers on 4 x 512 tokens (prefill-shaped)."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)


def decode():
    """The bench model on 8 sequences of one token (decode-shaped, without a KV cache)."""
    cfg = PRESETS["decode"]
    return get_model(cfg), get_inputs(cfg)
