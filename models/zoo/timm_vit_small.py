"""timm ViT-S/16 (``timm.create_model("vit_small_patch16_224", pretrained=False)``): random weights.

Patch embedding (conv 16x16 stride 16), then pre-norm blocks: LayerNorm, qkv Linear, attention (timm calls
``F.scaled_dot_product_attention`` where torch has it: already fused), proj Linear, residual add, LayerNorm,
fc1 + GELU, fc2, residual add.  The tiny preset overrides the depth, width and image size through create_model's
keyword arguments (the same VisionTransformer class).

  models/zoo/timm_vit_small.py          tiny: depth 2, width 64, 2 heads, 2 x 3 x 32 x 32 (4 patches + cls)
  models/zoo/timm_vit_small.py:bench    ViT-S/16 as published (depth 12, width 384, 6 heads), 32 x 3 x 224 x 224
"""

from dataclasses import dataclass

import torch
from _zoolib import images, import_library


@dataclass(frozen=True)
class ViTShape:
    depth: int = 2
    width: int = 64
    heads: int = 2
    batch: int = 2
    image: int = 32


PRESETS = {"tiny": ViTShape(), "bench": ViTShape(depth=12, width=384, heads=6, batch=32, image=224)}
REALISTIC_ENTRIES = ("bench",)  # the entry functions of the realistic presets


def get_model(cfg: ViTShape = PRESETS["tiny"]) -> torch.nn.Module:
    timm = import_library("timm")
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_224", pretrained=False, img_size=cfg.image, depth=cfg.depth,
                             embed_dim=cfg.width, num_heads=cfg.heads).eval()  # (B, 3, H, W) -> (B, 1000)


def get_inputs(cfg: ViTShape = PRESETS["tiny"]):
    return (images(cfg.batch, cfg.image),)


def bench():
    """ViT-S/16 at batch 32, 224 x 224 (196 patches + cls)."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)
