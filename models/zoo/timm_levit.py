"""timm LeViT (``timm.create_model("levit_128s", pretrained=False)``): random weights.  A hybrid conv/attention net.

A conv stem (four stride-2 conv + BatchNorm, Hardswish between them), then attention stages on the 16x-downsampled
grid in which every projection is timm's ``LinearNorm`` -- a bias-free Linear followed by **BatchNorm1d** on the
flattened tokens (``bn(linear(x).flatten(0, 1)).reshape_as(x)``), foldable at inference, which timm's own
``LinearNorm.fuse`` does by hand -- attention with a learned position bias, Hardswish MLPs, and shrinking attention
blocks between stages; BatchNorm1d + Linear heads (the distilled pair averaged in eval).  The tiny preset overrides the
widths, depths and image size through create_model's keyword arguments (the same LevitDistilled class).

  models/zoo/timm_levit.py          tiny: widths (32, 48, 64), key dim 8, 2 heads, depth 1 per stage, 2 x 3 x 64 x 64
  models/zoo/timm_levit.py:bench    LeViT-128S as published (widths 128/256/384, depths 2/3/4), 32 x 3 x 224 x 224
"""

from dataclasses import dataclass

import torch
from _zoolib import images, import_library


@dataclass(frozen=True)
class LevitShape:
    widths: tuple = (32, 48, 64)
    key_dim: int = 8
    heads: tuple = (2, 2, 2)
    depths: tuple = (1, 1, 1)
    batch: int = 2
    image: int = 64


PRESETS = {
    "tiny": LevitShape(),
    "bench": LevitShape(widths=(128, 256, 384), key_dim=16, heads=(4, 6, 8), depths=(2, 3, 4), batch=32, image=224),
}
REALISTIC_ENTRIES = ("bench",)  # the entry functions of the realistic presets


def get_model(cfg: LevitShape = PRESETS["tiny"]) -> torch.nn.Module:
    timm = import_library("timm")
    torch.manual_seed(0)
    model = timm.create_model("levit_128s", pretrained=False, img_size=cfg.image, embed_dim=cfg.widths,
                              key_dim=cfg.key_dim, num_heads=cfg.heads, depth=cfg.depths).eval()
    # BatchNorm as a trained checkpoint has it: scales that are not zero (timm starts each residual branch's last
    # BatchNorm at weight 0, which cuts the branches off), and running statistics of the activations themselves (one
    # pass in training mode over other random images), not (0, 1) -- so a fold must use them, and the output moves
    # with the input (a verification that could not see a wrong rewrite otherwise)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for bn in norms:
            bn.weight.copy_(1.0 + 0.2 * torch.randn(bn.num_features, generator=gen))
            bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=gen))
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average: the statistics of the pass below
        model.train()(images(max(cfg.batch, 4), cfg.image, seed=3))
    for bn in norms:
        bn.momentum = 0.1
    model.eval()
    return model  # (B, 3, H, W) -> (B, 1000)


def get_inputs(cfg: LevitShape = PRESETS["tiny"]):
    return (images(cfg.batch, cfg.image),)


def bench():
    """LeViT-128S at batch 32, 224 x 224."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)
