"""Hugging Face CLIP vision tower (``transformers.CLIPVisionModel``), random weights, from a ``CLIPVisionConfig``.

Patch embedding (conv, stride = patch), class token and position embeddings, a pre-LayerNorm, then pre-norm encoder
layers: LayerNorm, q/k/v Linear (with biases), attention through ``F.scaled_dot_product_attention`` (``"sdpa"``),
out Linear, residual add, LayerNorm, fc1 + **QuickGELU** (``x * sigmoid(1.702 x)``, CLIP's activation, written out
in elementwise ops), fc2, residual add.  The model returns ``last_hidden_state`` (the pooled output is computed too).

  models/zoo/hf_clip_vision.py          tiny: 2 layers, hidden 64, 2 heads, MLP 256, patch 8, 2 x 3 x 32 x 32
  models/zoo/hf_clip_vision.py:bench    CLIP ViT-B/32's tower (12 layers, 768, 12 heads, MLP 3072), 32 x 3 x 224 x 224
"""

from dataclasses import dataclass

import torch
from _zoolib import images, import_library


@dataclass(frozen=True)
class ClipVisionShape:
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    mlp: int = 256
    patch: int = 8
    image: int = 32
    batch: int = 2
    attn_implementation: str = "sdpa"  # or "eager"


PRESETS = {
    "tiny": ClipVisionShape(),
    "bench": ClipVisionShape(hidden=768, layers=12, heads=12, mlp=3072, patch=32, image=224, batch=32),
}
REALISTIC_ENTRIES = ("bench",)  # the entry functions of the realistic presets


class ImageFeatures(torch.nn.Module):
    """CLIPVisionModel called with pixels, returning the plain tensor ``last_hidden_state``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 1 + patches, hidden)
        return self.model(pixel_values=pixel_values, return_dict=True).last_hidden_state


def get_model(cfg: ClipVisionShape = PRESETS["tiny"]) -> torch.nn.Module:
    transformers = import_library("transformers")
    config = transformers.CLIPVisionConfig(
        hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        intermediate_size=cfg.mlp, patch_size=cfg.patch, image_size=cfg.image, hidden_act="quick_gelu",
        attn_implementation=cfg.attn_implementation)
    torch.manual_seed(0)
    return ImageFeatures(transformers.CLIPVisionModel(config)).eval()


def get_inputs(cfg: ClipVisionShape = PRESETS["tiny"]):
    return (images(cfg.batch, cfg.image),)


def bench():
    """CLIP ViT-B/32's vision tower at batch 32, 224 x 224 (49 patches + cls)."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)
