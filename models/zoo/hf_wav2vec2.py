"""Hugging Face wav2vec 2.0 encoder (``transformers.Wav2Vec2Model``), random weights, from a ``Wav2Vec2Config``.

An audio encoder on raw waveforms: a 1-d conv feature extractor -- seven conv1d (no bias), the first followed by
GroupNorm, every one by **GELU** -- a feature projection (LayerNorm, Linear), a convolutional position embedding
(a grouped, weight-normed conv1d + GELU, added back), then post-norm transformer layers: q/k/v Linear, attention
through ``F.scaled_dot_product_attention`` (``"sdpa"``), out Linear, residual add + LayerNorm, Linear + GELU, Linear,
residual add + LayerNorm.  The model returns ``last_hidden_state``.

  models/zoo/hf_wav2vec2.py          tiny: conv widths 32, 2 layers, hidden 64, 2 heads, 2 x 4000 samples (0.25 s)
  models/zoo/hf_wav2vec2.py:bench    wav2vec2-base-shaped (conv widths 512, 12 layers, 768, 12 heads, FFN 3072),
                                     8 x 160000 samples (10 s at 16 kHz)
"""

from dataclasses import dataclass

import torch
from _zoolib import import_library


@dataclass(frozen=True)
class Wav2Vec2Shape:
    conv_width: int = 32
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    ffn: int = 256
    pos_conv: int = 16  # kernel of the convolutional position embedding
    pos_groups: int = 4
    batch: int = 2
    samples: int = 4000


PRESETS = {
    "tiny": Wav2Vec2Shape(),
    "bench": Wav2Vec2Shape(conv_width=512, hidden=768, layers=12, heads=12, ffn=3072, pos_conv=128, pos_groups=16,
                           batch=8, samples=160000),
}
REALISTIC_ENTRIES = ("bench",)  # the entry functions of the realistic presets


class Encoded(torch.nn.Module):
    """Wav2Vec2Model called with a waveform, returning the plain tensor ``last_hidden_state``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:  # (B, samples) -> (B, frames, hidden)
        return self.model(input_values=input_values, return_dict=True).last_hidden_state


def get_model(cfg: Wav2Vec2Shape = PRESETS["tiny"]) -> torch.nn.Module:
    transformers = import_library("transformers")
    config = transformers.Wav2Vec2Config(
        conv_dim=(cfg.conv_width,) * 7, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.ffn, num_conv_pos_embeddings=cfg.pos_conv,
        num_conv_pos_embedding_groups=cfg.pos_groups, mask_time_prob=0.0, attn_implementation="sdpa")
    torch.manual_seed(0)
    return Encoded(transformers.Wav2Vec2Model(config)).eval()


def get_inputs(cfg: Wav2Vec2Shape = PRESETS["tiny"]):
    return (torch.randn(cfg.batch, cfg.samples, generator=torch.Generator().manual_seed(1)),)  # (B, samples)


def bench():
    """wav2vec2-base-shaped on 8 clips of 10 s at 16 kHz."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)
