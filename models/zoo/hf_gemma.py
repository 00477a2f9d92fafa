"""Hugging Face Gemma (``transformers.GemmaModel``), random weights, built from a ``GemmaConfig``: nothing downloaded.

A Llama-like pre-norm decoder with Gemma's own idioms: its RMSNorm scales by ``1 + w`` (``output * (1.0 +
self.weight.float())``, then ``type_as(x)``), its MLP is gated by GELU(tanh) (``gelu_pytorch_tanh(gate) * up``), its
embeddings are multiplied by sqrt(hidden), and a head is 256 wide whatever the hidden size.  Rotary embeddings,
multi-query attention through ``F.scaled_dot_product_attention`` (``"sdpa"``), no biases.  The model returns
``last_hidden_state``, no KV cache.  Gemma initialises its norms' ``w`` to 0 (a scale of 1); here they are drawn at
random, so a rewrite that got ``1 + w`` wrong would show.

  models/zoo/hf_gemma.py          tiny: 2 layers, hidden 64, 4 heads of 16 / 1 KV head, MLP 128, 2 x 16 tokens
  models/zoo/hf_gemma.py:bench    Gemma-2B-shaped layers (hidden 2048, 8 heads of 256 / 1 KV head, MLP 16384),
                                  2 layers, vocabulary 32000 (Gemma's is 256000), 4 x 512 tokens
  models/zoo/hf_gemma.py:decode   the bench model on 8 x 1 token, no cache
"""

from dataclasses import replace

import torch
from _zoolib import token_ids
from hf_llama import LlamaShape, decoder  # Gemma's config has Llama's fields, and its head_dim

GemmaShape = LlamaShape

PRESETS = {
    "tiny": GemmaShape(kv_heads=1, head_dim=16),
    "bench": GemmaShape(hidden=2048, layers=2, heads=8, kv_heads=1, head_dim=256, mlp=16384, vocab=32000,
                        positions=8192, batch=4, seq=512),
}
PRESETS["decode"] = replace(PRESETS["bench"], batch=8, seq=1)
REALISTIC_ENTRIES = ("bench", "decode")  # the entry functions of the realistic presets


def get_model(cfg: GemmaShape = PRESETS["tiny"]) -> torch.nn.Module:
    model = decoder(cfg, "Gemma")
    torch.manual_seed(1)
    with torch.no_grad():  # every norm's w at random (Gemma's own init: 0)
        for m in model.modules():
            if type(m).__name__ == "GemmaRMSNorm":
                m.weight.normal_(0.0, 0.1)
    return model


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
