"""Hugging Face GPT-2 with ``attn_implementation="sdpa"``: hf_gpt2.py's model and presets, its attention through
``F.scaled_dot_product_attention`` (with the causal mask as a tensor), which analyze reports as already fused.

  models/zoo/hf_gpt2_sdpa.py          tiny: 2 layers, hidden 64, 2 heads, 2 x 16 tokens
  models/zoo/hf_gpt2_sdpa.py:bench    GPT-2-small-shaped, 4 layers, 8 x 512 tokens
  models/zoo/hf_gpt2_sdpa.py:decode_cache, :padded    hf_gpt2.py's, with SDPA attention
"""

from dataclasses import replace

import hf_gpt2
import torch

PRESETS = {name: replace(cfg, attn_implementation="sdpa") for name, cfg in hf_gpt2.PRESETS.items()}
REALISTIC_ENTRIES = ("bench", "decode_cache", "padded")  # the entry functions of the realistic presets


def get_model(cfg: hf_gpt2.GPT2Shape = PRESETS["tiny"]) -> torch.nn.Module:
    return hf_gpt2.get_model(cfg)  # (B, T) ids -> (B, T, hidden)


def get_inputs(cfg: hf_gpt2.GPT2Shape = PRESETS["tiny"]):
    return hf_gpt2.get_inputs(cfg)


def bench():
    """GPT-2-small-shaped, 4 layers, on 8 x 512 tokens, SDPA attention."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)


def decode_cache():
    """One decode step of GPT-2 (SDPA attention, LM head) over a static cache holding a 128-token prompt."""
    return hf_gpt2.decode_cache(PRESETS["decode_cache"])


def padded():
    """The bench model, SDPA attention, on a left-padded batch with its attention mask."""
    return hf_gpt2.padded(PRESETS["padded"])
