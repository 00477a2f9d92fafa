"""Convolution: conv (+ BatchNorm) (+ activation), folded at load time or run as one oneDNN (cuDNN: ReLU) call."""

from fxfusion.fusions.base import Family, Matcher
from fxfusion.fusions.conv.match import match_conv
from fxfusion.fusions.conv.pattern import PATTERNS

FAMILY = Family("conv", tuple(PATTERNS), (
    Matcher(("conv",), match_conv,
            "legal when BN uses running statistics and the conv weight is this site's alone (a shared conv is not "
            "folded)"),
))
