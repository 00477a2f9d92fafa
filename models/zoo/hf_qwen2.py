"""Hugging Face Qwen2 (``transformers.Qwen2Model``), random weights, built from a ``Qwen2Config``: nothing downloaded.

Llama's layer with biases on the q/k/v projections: RMSNorm, q/k/v (with bias) and o projections, rotary
embeddings, grouped-query attention through ``F.scaled_dot_product_attention`` (``"sdpa"``), RMSNorm, SwiGLU MLP.
The model returns ``last_hidden_state``, with no KV cache.

  models/zoo/hf_qwen2.py           tiny: 2 layers, hidden 64, 4 heads / 2 KV heads, 2 x 16 tokens
  models/zoo/hf_qwen2.py:bench     Qwen2-0.5B-shaped (hidden 896, 14 heads / 2 KV heads, MLP 4864, vocab 151936),
                                   4 layers, 4 x 512 tokens
  models/zoo/hf_qwen2.py:decode    the same model on 8 x 1 token
  models/zoo/hf_qwen2.py:decode_cache  the same model (with its LM head): one token per sequence after a 128-token
                                   prompt of 8 sequences, over transformers' StaticCache of 192 positions
                                   (hf_llama.DecodeStep; hf_llama.greedy_generate runs it in a generation loop)
  models/zoo/hf_qwen2.py:padded    the bench model on 4 x 512 tokens, every other sequence left-padded by 128
"""

from dataclasses import replace

import torch
from _zoolib import token_ids
from hf_llama import LlamaShape, Padded, decode_step, decoder, padded_inputs  # Qwen2's config has Llama's fields

Qwen2Shape = LlamaShape

PRESETS = {
    "tiny": Qwen2Shape(),
    "bench": Qwen2Shape(hidden=896, layers=4, heads=14, kv_heads=2, mlp=4864, vocab=151936, positions=2048,
                        batch=4, seq=512),
}
PRESETS["decode"] = replace(PRESETS["bench"], batch=8, seq=1)
PRESETS["decode_cache"] = replace(PRESETS["bench"], batch=8, seq=128, cache=192)
PRESETS["padded"] = replace(PRESETS["bench"], pad=128)
REALISTIC_ENTRIES = ("bench", "decode", "decode_cache", "padded")  # the entry functions of the realistic presets


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


def decode_cache(cfg: LlamaShape = PRESETS["decode_cache"]):
    """One decode step of the bench model (with its LM head) over a static cache holding a 128-token prompt."""
    return decode_step(decoder(cfg, "Qwen2", "ForCausalLM"), cfg)


def padded(cfg: LlamaShape = PRESETS["padded"]):
    """The bench model on a left-padded batch with its attention mask."""
    return Padded(decoder(cfg, "Qwen2").model).eval(), padded_inputs(cfg)
