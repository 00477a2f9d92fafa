"""Hugging Face Gemma (``transformers.GemmaModel``), random weights, built from a ``GemmaConfig``: nothing downloaded.

A Llama-like pre-norm decoder with Gemma's own idioms: its RMSNorm scales by ``1 + w`` (``output * (1.0 +
self.weight.float())``, then ``type_as(x)``), its MLP is gated by GELU(tanh) (``gelu_pytorch_tanh(gate) * up``), its
embeddings are multiplied by sqrt(hidden), and a head is 256 wide whatever the hidden size.  Rotary embeddings,
multi-query attention through ``F.scaled_dot_product_attention`` (``"sdpa"``), no biases.  The model returns
``last_hidden_state``, no KV cache.

  models/zoo/hf_gemma.py          tiny: 2 layers, hidden 64, 4 heads of 16 / 1 KV head, MLP 128, 2 x 16 tokens
  models/zoo/hf_gemma.py:bench    Gemma-2B-shaped layers (hidden 2048, 8 heads of 256 / 1 KV head, MLP 16384),
                                  2 layers, vocabulary 32000 (Gemma's is 256000), 4 x 512 tokens
  models/zoo/hf_gemma.py:decode   the bench model on 8 x 1 token, no cache
"""

from dataclasses import dataclass, replace

import torch
from _zoolib import LastHiddenState, import_library, token_ids


@dataclass(frozen=True)
class GemmaShape:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 1
    head_dim: int = 16
    mlp: int = 128
    vocab: int = 256
    positions: int = 64
    batch: int = 2
    seq: int = 16
    attn_implementation: str = "sdpa"  # or "eager"


PRESETS = {
    "tiny": GemmaShape(),
    "bench": GemmaShape(hidden=2048, layers=2, heads=8, kv_heads=1, head_dim=256, mlp=16384, vocab=32000,
                        positions=8192, batch=4, seq=512),
}
PRESETS["decode"] = replace(PRESETS["bench"], batch=8, seq=1)
REALISTIC_ENTRIES = ("bench", "decode")  # the entry functions of the realistic presets


def get_model(cfg: GemmaShape = PRESETS["tiny"]) -> torch.nn.Module:
    transformers = import_library("transformers")
    config = transformers.GemmaConfig(
        hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim, intermediate_size=cfg.mlp, vocab_size=cfg.vocab,
        max_position_embeddings=cfg.positions, bos_token_id=0, eos_token_id=1, pad_token_id=None, use_cache=False,
        attn_implementation=cfg.attn_implementation)
    torch.manual_seed(0)
    model = transformers.GemmaModel(config)
    with torch.no_grad():  # Gemma initialises its norms' w to 0 (a scale of 1): random, so a wrong 1 + w shows
        for m in model.modules():
            if type(m).__name__ == "GemmaRMSNorm":
                m.weight.normal_(0.0, 0.1)
    return LastHiddenState(model).eval()  # (B, T) ids -> (B, T, hidden)


def get_inputs(cfg: GemmaShape = PRESETS["tiny"]):
    return (token_ids(cfg.batch, cfg.seq, cfg.vocab),)


def bench():
    """2 Gemma-2B-shaped layers on 4 x 512 tokens (prefill-shaped)."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)


def decode():
    """The bench model on 8 sequences of one token (decode-shaped, without a KV cache)."""
    cfg = PRESETS["decode"]
    return get_model(cfg), get_inputs(cfg)
