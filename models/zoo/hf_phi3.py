"""Hugging Face Phi-3 (``transformers.Phi3Model``), random weights, built from a ``Phi3Config``: nothing downloaded.

A Llama-like pre-norm decoder whose projections are pre-fused in the checkpoint and split after the GEMM: one
``qkv_proj`` Linear sliced into q, k and v (``qkv[..., :q]``, ...), and one ``gate_up_proj`` Linear chunked in two,
then ``up * silu(gate)`` and ``down_proj``.  RMSNorm (written out), rotary embeddings, grouped-query attention through
``F.scaled_dot_product_attention`` (``"sdpa"``), no biases.  The model returns ``last_hidden_state``, no KV cache.

  models/zoo/hf_phi3.py          tiny: 2 layers, hidden 64, 4 heads / 2 KV heads, MLP 128, 2 x 16 tokens
  models/zoo/hf_phi3.py:bench    Phi-3-mini-shaped layers (hidden 3072, 32 heads, MLP 8192), 2 layers, 4 x 512 tokens
  models/zoo/hf_phi3.py:decode   the bench model on 8 x 1 token, no cache
"""

from dataclasses import dataclass, replace

import torch
from _zoolib import LastHiddenState, import_library, token_ids


@dataclass(frozen=True)
class Phi3Shape:
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
    "tiny": Phi3Shape(),
    "bench": Phi3Shape(hidden=3072, layers=2, heads=32, kv_heads=32, mlp=8192, vocab=32064, positions=4096,
                       batch=4, seq=512),
}
PRESETS["decode"] = replace(PRESETS["bench"], batch=8, seq=1)
REALISTIC_ENTRIES = ("bench", "decode")  # the entry functions of the realistic presets


def get_model(cfg: Phi3Shape = PRESETS["tiny"]) -> torch.nn.Module:
    transformers = import_library("transformers")
    config = transformers.Phi3Config(
        hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads, intermediate_size=cfg.mlp, vocab_size=cfg.vocab,
        max_position_embeddings=cfg.positions, original_max_position_embeddings=cfg.positions, bos_token_id=0,
        eos_token_id=1, pad_token_id=None, use_cache=False, attn_implementation=cfg.attn_implementation)
    torch.manual_seed(0)
    return LastHiddenState(transformers.Phi3Model(config)).eval()  # (B, T) ids -> (B, T, hidden)


def get_inputs(cfg: Phi3Shape = PRESETS["tiny"]):
    return (token_ids(cfg.batch, cfg.seq, cfg.vocab),)


def bench():
    """2 Phi-3-mini-shaped layers on 4 x 512 tokens (prefill-shaped)."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)


def decode():
    """The bench model on 8 sequences of one token (decode-shaped, without a KV cache)."""
    cfg = PRESETS["decode"]
    return get_model(cfg), get_inputs(cfg)
