"""Hugging Face SegFormer encoder (``transformers.SegformerModel``), random weights, from a ``SegformerConfig``.

A hybrid conv/attention net (the MiT encoder): per stage an overlapping patch embedding (conv + LayerNorm), then
blocks of LayerNorm, efficient self-attention (q Linear on every token; k and v on a spatially reduced copy: a strided
conv + LayerNorm), out Linear, residual add, LayerNorm and the Mix-FFN -- Linear, a depthwise 3x3 **conv with bias,
flattened back to tokens, then GELU, no BatchNorm** (the conv MLP), Linear -- residual add.  The model returns ``last_hidden_state``, the last
stage's (B, C, H/32, W/32) feature map.

  models/zoo/hf_segformer.py          tiny: 4 stages of width 16/32/48/64, one block each, 2 x 3 x 64 x 64
  models/zoo/hf_segformer.py:bench    MiT-b0 (widths 32/64/160/256, depths 2/2/2/2), 16 x 3 x 512 x 512
"""

from dataclasses import dataclass

import torch
from _zoolib import images, import_library


@dataclass(frozen=True)
class SegformerShape:
    widths: tuple = (16, 32, 48, 64)
    depths: tuple = (1, 1, 1, 1)
    heads: tuple = (1, 1, 2, 2)
    batch: int = 2
    image: int = 64


PRESETS = {
    "tiny": SegformerShape(),
    "bench": SegformerShape(widths=(32, 64, 160, 256), depths=(2, 2, 2, 2), heads=(1, 2, 5, 8), batch=16, image=512),
}
REALISTIC_ENTRIES = ("bench",)  # the entry functions of the realistic presets


class Features(torch.nn.Module):
    """SegformerModel called with pixels, returning the plain tensor ``last_hidden_state``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C4, H/32, W/32)
        return self.model(pixel_values=pixel_values, return_dict=True).last_hidden_state


def get_model(cfg: SegformerShape = PRESETS["tiny"]) -> torch.nn.Module:
    transformers = import_library("transformers")
    config = transformers.SegformerConfig(hidden_sizes=list(cfg.widths), depths=list(cfg.depths),
                                          num_attention_heads=list(cfg.heads), decoder_hidden_size=64)
    torch.manual_seed(0)
    return Features(transformers.SegformerModel(config)).eval()


def get_inputs(cfg: SegformerShape = PRESETS["tiny"]):
    return (images(cfg.batch, cfg.image),)


def bench():
    """MiT-b0's encoder at batch 16, 512 x 512 (ADE20K's crop)."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)
