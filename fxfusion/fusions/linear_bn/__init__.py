"""Linear + BatchNorm1d at inference: the BatchNorm folded into the linear's weight and bias, as conv + BN is folded.

Its matcher runs before the sibling and linear families' (see fusions.registry.BUILTIN): a linear that a BatchNorm
reads is this family's site, not a linear site on its own.
"""

from fxfusion.fusions.base import Family, Matcher
from fxfusion.fusions.linear_bn.match import match_linear_bn
from fxfusion.fusions.linear_bn.pattern import PATTERNS

FAMILY = Family("linear_bn", tuple(PATTERNS), (
    Matcher(("batch_norm",), match_linear_bn,
            "legal when the BatchNorm runs in inference mode on running statistics, normalises the linear's output "
            "features (a 2-d (M, N) output), and the linear's weight (and bias) are parameters read here alone"),
))
