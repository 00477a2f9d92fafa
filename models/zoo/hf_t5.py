"""Hugging Face T5 v1.1 / Flan-T5 (``transformers.T5Model``), random weights, from a ``T5Config``: an encoder-decoder.

Encoder and decoder layers are pre-norm: T5's RMSNorm (no mean, no bias; variance in float32), q/k/v/o Linear
without biases, attention with a learned relative-position bias added to the scores (bidirectional in the encoder,
causal in the decoder, plus cross-attention on the encoder's output), and the gated-GELU feed-forward of T5 v1.1
(``feed_forward_proj="gated-gelu"``: GELU(tanh)(wi_0 x) * wi_1 x, then wo).  The model returns the decoder's
``last_hidden_state``.

  models/zoo/hf_t5.py          tiny: 2 + 2 layers, d_model 64, 4 heads of 16, FFN 128, 2 x 16 source, 2 x 8 target
  models/zoo/hf_t5.py:bench    Flan-T5-base-shaped (768, 12 heads of 64, FFN 2048), 4 + 4 layers, 8 x 512 source,
                               8 x 128 target
"""

from dataclasses import dataclass

import torch
from _zoolib import import_library, token_ids


@dataclass(frozen=True)
class T5Shape:
    d_model: int = 64
    layers: int = 2  # encoder layers, and as many decoder layers
    heads: int = 4
    d_kv: int = 16
    ffn: int = 128
    vocab: int = 256
    batch: int = 2
    source: int = 16
    target: int = 8


PRESETS = {
    "tiny": T5Shape(),
    "bench": T5Shape(d_model=768, layers=4, heads=12, d_kv=64, ffn=2048, vocab=32128, batch=8, source=512,
                     target=128),
}
REALISTIC_ENTRIES = ("bench",)  # the entry functions of the realistic presets


class DecoderStates(torch.nn.Module):
    """T5Model called with source and target token ids, returning the decoder's plain ``last_hidden_state``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, decoder_input_ids):  # (B, S), (B, T) ids -> (B, T, d_model)
        return self.model(input_ids=input_ids, decoder_input_ids=decoder_input_ids, use_cache=False,
                          return_dict=True).last_hidden_state


def get_model(cfg: T5Shape = PRESETS["tiny"]) -> torch.nn.Module:
    transformers = import_library("transformers")
    config = transformers.T5Config(
        d_model=cfg.d_model, num_layers=cfg.layers, num_decoder_layers=cfg.layers, num_heads=cfg.heads,
        d_kv=cfg.d_kv, d_ff=cfg.ffn, vocab_size=cfg.vocab, feed_forward_proj="gated-gelu", dropout_rate=0.0,
        is_encoder_decoder=True, use_cache=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        tie_word_embeddings=False, attn_implementation="eager")
    torch.manual_seed(0)
    return DecoderStates(transformers.T5Model(config)).eval()


def get_inputs(cfg: T5Shape = PRESETS["tiny"]):
    return token_ids(cfg.batch, cfg.source, cfg.vocab), token_ids(cfg.batch, cfg.target, cfg.vocab, seed=2)


def bench():
    """Flan-T5-base-shaped, 4 + 4 layers, on 8 x 512 source and 8 x 128 target tokens."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)
