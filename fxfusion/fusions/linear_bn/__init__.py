"""Linear + BatchNorm1d at inference, and linear + layer scale: a per-feature affine after a linear folded into its
weight and bias, as conv + BN is folded.

Its matchers run before the sibling and linear families' (see fusions.registry.BUILTIN): a linear that a BatchNorm or
a layer scale reads is this family's site, not a linear site on its own.
"""

from fxfusion.fusions.base import Family, Matcher
from fxfusion.fusions.linear_bn.match import match_linear_bn
from fxfusion.fusions.linear_bn.pattern import PATTERNS
from fxfusion.fusions.linear_bn.scale import PATTERN as SCALE, match_linear_scale

FAMILY = Family("linear_bn", tuple(PATTERNS) + (SCALE,), (
    Matcher(("batch_norm",), match_linear_bn,
            "legal when the BatchNorm runs in inference mode on running statistics, normalises the linear's output "
            "features (a 2-d (M, N) output), and the linear's weight (and bias) are parameters read here alone"),
    Matcher(("mul",), match_linear_scale,
            "legal when the scale is a parameter with one value per output feature and the linear's output (and the "
            "permute after it) is read by the scale alone"),
))
