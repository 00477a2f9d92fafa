"""Hugging Face Qwen2 (``transformers.Qwen2Model``), random weights, built from a ``Qwen2Config``: nothing downloaded.

Llama's layer with biases on the q/k/v projections: RMSNorm, q/k/v (with bias) and o projections, rotary
embeddings, grouped-query attention through ``F.scaled_dot_product_attention`` (``"sdpa"``), RMSNorm, SwiGLU MLP.
The model returns ``last_hidden_state``, with no KV cache.

  models/zoo/hf_qwen2.py           tiny: 2 layers, hidden 64, 4 heads / 2 KV heads, 2 x 16 tokens
  models/zoo/hf_qwen2.py:bench     Qwen2-0.5B-shaped (hidden 896, 14 heads / 2 KV heads, MLP 4864, vocab 151936),
                                   4 layers, 4 x 512 tokens
  models/zoo/hf_qwen2.py:decode    the same model on 8 x 1 token
"""

from dataclasses import dataclass, replace

import torch
from _zoolib import LastHiddenState, import_library, token_ids


@dataclass(frozen=True)
class Qwen2Shape:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    mlp: int = 128
    vocab: int = 256
    positions: int = 64
    batch: int = 2
    seq: int = 16
    attn_implementation: str = "sdpa"  # or "eager"


PRESETS = {
    "tiny": Qwen2Shape(),
    "bench": Qwen2Shape(hidden=896, layers=4, heads=14, kv_heads=2, mlp=4864, vocab=151936, positions=2048,
                        batch=4, seq=512),
}
PRESETS["decode"] = replace(PRESETS["bench"], batch=8, seq=1)
REALISTIC_ENTRIES = ("bench", "decode")  # the entry functions of the realistic presets


def get_model(cfg: Qwen2Shape = PRESETS["tiny"]) -> torch.nn.Module:
    transformers = import_library("transformers")
    config = transformers.Qwen2Config(
        hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads, intermediate_size=cfg.mlp, vocab_size=cfg.vocab,
        max_position_embeddings=cfg.positions, bos_token_id=0, eos_token_id=1, pad_token_id=None, use_cache=False,
        attn_implementation=cfg.attn_implementation)
    torch.manual_seed(0)
    return LastHiddenState(transformers.Qwen2Model(config)).eval()  # (B, T) ids -> (B, T, hidden)


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
