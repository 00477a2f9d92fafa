"""Normalisation: RMSNorm written out (-> F.rms_norm), residual add + LayerNorm (-> one Triton kernel), and the
pre-LN residual add + LayerNorm / RMSNorm whose sum is read again (-> one Triton kernel writing both, or a compiled
region with two outputs)."""

from fxfusion.fusions.base import Family, Matcher
from fxfusion.fusions.norm.match import (match_add_layernorm, match_add_layernorm_sum, match_add_rmsnorm_sum,
                                         match_linear_add_rmsnorm_sum, match_rms_norm_op, match_rmsnorm_written)
from fxfusion.fusions.norm.pattern import PATTERNS

# The sum-keeping matchers run first: where the sum is read only by the norm they match nothing and leave the site
# to add_layernorm / rmsnorm.
FAMILY = Family("norm", tuple(PATTERNS), (
    Matcher(("rsqrt",), match_linear_add_rmsnorm_sum,
            "legal when the bias-free GEMM's output is read only by the residual add and the norm's temporaries by "
            "nothing else: the fused variants write the sum and the normalised value"),
    Matcher(("rsqrt",), match_add_rmsnorm_sum,
            "legal when the norm's temporaries are read by nothing else: the fused variants write the sum and the "
            "normalised value, which the rest of the graph reads"),
    Matcher(("layer_norm",), match_add_layernorm_sum,
            "legal when only the sum and the LayerNorm's output are read outside: the fused variants write both"),
    Matcher(("rsqrt",), match_rmsnorm_written,
            "legal when the squared/mean/rsqrt temporaries are read by nothing else: F.rms_norm never writes them"),
    Matcher(("rms_norm",), match_rms_norm_op, "legal as is: already one op; reported, never rewritten"),
    Matcher(("layer_norm",), match_add_layernorm,
            "legal when the sum is read only by the LayerNorm: the fused kernel does not write the sum out"),
))
