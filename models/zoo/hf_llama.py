"""Hugging Face Llama (``transformers.LlamaModel``), random weights, built from a ``LlamaConfig``: nothing downloaded.

Pre-norm decoder layers: RMSNorm (written out: pow, mean, rsqrt, multiply), q/k/v/o projections without bias,
rotary embeddings, grouped-query attention through ``F.scaled_dot_product_attention`` (``"sdpa"``, the library's
default on torch 2), RMSNorm, SwiGLU MLP (gate and up projections, SiLU, multiply, down projection).  The model
returns ``last_hidden_state``; no KV cache (``use_cache=False``): the decode preset is one token, as a single
step would be.

  models/zoo/hf_llama.py           tiny: 2 layers, hidden 64, 4 heads / 2 KV heads, 2 x 16 tokens
  models/zoo/hf_llama.py:bench     4 layers, hidden 1024, 16 heads / 4 KV heads, MLP 2816, 4 x 512 tokens
  models/zoo/hf_llama.py:decode    the same model on 8 x 1 token
"""

from dataclasses import dataclass, replace

import torch
from _zoolib import LastHiddenState, import_library, token_ids


@dataclass(frozen=True)
class LlamaShape:
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
    "tiny": LlamaShape(),
    "bench": LlamaShape(hidden=1024, layers=4, heads=16, kv_heads=4, mlp=2816, vocab=32000, positions=2048,
                        batch=4, seq=512),
}
PRESETS["decode"] = replace(PRESETS["bench"], batch=8, seq=1)
REALISTIC_ENTRIES = ("bench", "decode")  # the entry functions of the realistic presets


def decoder(cfg: LlamaShape, family: str = "Llama") -> torch.nn.Module:
    """``transformers.<family>Model`` from its ``<family>Config`` at ``cfg``: Llama, and the models that share its
    config fields (Qwen2, Mistral)."""
    transformers = import_library("transformers")
    config = getattr(transformers, f"{family}Config")(
        hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads, intermediate_size=cfg.mlp, vocab_size=cfg.vocab,
        max_position_embeddings=cfg.positions, bos_token_id=0, eos_token_id=1, pad_token_id=None, use_cache=False,
        attn_implementation=cfg.attn_implementation)
    torch.manual_seed(0)
    return LastHiddenState(getattr(transformers, f"{family}Model")(config)).eval()  # (B, T) ids -> (B, T, hidden)


def get_model(cfg: LlamaShape = PRESETS["tiny"]) -> torch.nn.Module:
    return decoder(cfg, "Llama")


def get_inputs(cfg: LlamaShape = PRESETS["tiny"]):
    return (token_ids(cfg.batch, cfg.seq, cfg.vocab),)


def bench():
    """4 Llama layers of width 1024 on 4 x 512 tokens (prefill-shaped)."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)


def decode():
    """The bench model on 8 sequences of one token (decode-shaped, without a KV cache)."""
    cfg = PRESETS["decode"]
    return get_model(cfg), get_inputs(cfg)
