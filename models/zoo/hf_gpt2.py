"""Hugging Face GPT-2 (``transformers.GPT2Model``), random weights, built from a ``GPT2Config``: nothing downloaded.

Eager attention (``attn_implementation="eager"``): GPT2Attention's own matmul, scale, additive causal mask, softmax,
cast to value's dtype, dropout and matmul, which analyze matches as causal attention.  hf_gpt2_sdpa.py is the same
model with ``F.scaled_dot_product_attention`` (already fused).  The model returns ``last_hidden_state``.

  models/zoo/hf_gpt2.py          tiny: 2 layers, hidden 64, 2 heads, 2 x 16 tokens
  models/zoo/hf_gpt2.py:bench    GPT-2-small-shaped (768 wide, 12 heads, vocab 50257), 4 layers, 8 x 512 tokens
  models/zoo/hf_gpt2.py:decode_cache  the same model (GPT2LMHeadModel): one token per sequence after a 128-token
                                 prompt of 8 sequences, over transformers' StaticCache of 192 positions
                                 (hf_llama.DecodeStep; hf_llama.greedy_generate runs it in a generation loop)
  models/zoo/hf_gpt2.py:padded   the bench model on 8 x 512 tokens, every other sequence left-padded by 128
"""

from dataclasses import dataclass, replace

import torch
from _zoolib import LastHiddenState, import_library, token_ids
from hf_llama import Padded, decode_step, padded_inputs  # the zoo's causal LMs share the cache step and padding


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
    cache: int = 0  # decode_cache: the static cache's positions; 0: no cache
    pad: int = 0  # padded: the left padding of every other sequence


PRESETS = {
    "tiny": GPT2Shape(),
    "bench": GPT2Shape(hidden=768, layers=4, heads=12, vocab=50257, positions=1024, batch=8, seq=512),
}
PRESETS["decode_cache"] = replace(PRESETS["bench"], seq=128, cache=192)
PRESETS["padded"] = replace(PRESETS["bench"], pad=128)
REALISTIC_ENTRIES = ("bench", "decode_cache", "padded")  # the entry functions of the realistic presets


def get_model(cfg: GPT2Shape = PRESETS["tiny"], head: str = "Model") -> torch.nn.Module:
    """``transformers.GPT2Model`` wrapped to return ``last_hidden_state``; ``head="LMHeadModel"``: GPT2LMHeadModel."""
    transformers = import_library("transformers")
    config = transformers.GPT2Config(
        n_embd=cfg.hidden, n_layer=cfg.layers, n_head=cfg.heads, vocab_size=cfg.vocab, n_positions=cfg.positions,
        bos_token_id=cfg.vocab - 1, eos_token_id=cfg.vocab - 1, use_cache=False,
        attn_implementation=cfg.attn_implementation)
    torch.manual_seed(0)
    model = getattr(transformers, f"GPT2{head}")(config).eval()
    return LastHiddenState(model).eval() if head == "Model" else model  # (B, T) ids -> (B, T, hidden), or the LM


def get_inputs(cfg: GPT2Shape = PRESETS["tiny"]):
    return (token_ids(cfg.batch, cfg.seq, cfg.vocab),)


def bench():
    """GPT-2-small-shaped, 4 layers, on 8 x 512 tokens."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)


def decode_cache(cfg: GPT2Shape = PRESETS["decode_cache"]):
    """One decode step of GPT-2 (with its LM head) over a static cache holding a 128-token prompt."""
    return decode_step(get_model(cfg, "LMHeadModel"), cfg)


def padded(cfg: GPT2Shape = PRESETS["padded"]):
    """The bench model on a left-padded batch with its attention mask."""
    return Padded(get_model(cfg).model).eval(), padded_inputs(cfg)
