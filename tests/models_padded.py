"""Causal language models on a left-padded batch, as LLMs are served: random weights from a ``transformers`` config
(nothing downloaded), eager attention (``attn_implementation="eager"``: the library's own matmul, additive mask,
softmax in float32, matmul), and an ``attention_mask`` whose first row starts with pad tokens.

The pad rows are fully masked (a causal pad query sees only pad keys), which is what broke the float64 reference:
the mask's ``finfo(float64).min`` cast to float32 by the softmax becomes -inf, and a row of -inf gives NaN.

  tests/models_padded.py            Llama (RMSNorm, rotary, GQA, SwiGLU), 2 layers, hidden 64, 2 x 12 tokens
  tests/models_padded.py:gpt2       GPT-2 (LayerNorm, GELU MLP), 2 layers, hidden 64, 2 x 12 tokens
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models" / "zoo"))
from _zoolib import import_library, token_ids  # noqa: E402  (transformers imported as the zoo does)

BATCH, SEQ, PADS, VOCAB = 2, 12, 5, 256


class PaddedLM(torch.nn.Module):
    """A Hugging Face base model called with token ids and an attention mask; returns ``last_hidden_state``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # (B, T), (B, T)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                          return_dict=True).last_hidden_state  # (B, T, hidden)


def padded_inputs(batch: int = BATCH, seq: int = SEQ, pads: int = PADS) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a mask whose row 0 starts with ``pads`` pad tokens (left padding); the other rows are full."""
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, :pads] = 0
    return token_ids(batch, seq, VOCAB), mask


def llama() -> torch.nn.Module:
    transformers = import_library("transformers")
    config = transformers.LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
        vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=None,
        use_cache=False, attn_implementation="eager")
    torch.manual_seed(0)
    return PaddedLM(transformers.LlamaModel(config)).eval()


def get_model() -> torch.nn.Module:
    return llama()


def get_inputs():
    return padded_inputs()


def gpt2():
    """GPT-2 on the same left-padded batch."""
    transformers = import_library("transformers")
    config = transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=64, bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1, use_cache=False, attn_implementation="eager")
    torch.manual_seed(0)
    return PaddedLM(transformers.GPT2Model(config)).eval(), padded_inputs()
