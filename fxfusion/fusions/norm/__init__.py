"""Normalisation: RMSNorm written out (-> F.rms_norm) and residual add + LayerNorm (-> one Triton kernel)."""

from fxfusion.fusions.base import Family, Matcher
from fxfusion.fusions.norm.match import match_add_layernorm, match_rms_norm_op, match_rmsnorm_written
from fxfusion.fusions.norm.pattern import PATTERNS

FAMILY = Family("norm", tuple(PATTERNS), (
    Matcher(("rsqrt",), match_rmsnorm_written,
            "legal when the squared/mean/rsqrt temporaries are read by nothing else: F.rms_norm never writes them"),
    Matcher(("rms_norm",), match_rms_norm_op, "legal as is: already one op; reported, never rewritten"),
    Matcher(("layer_norm",), match_add_layernorm,
            "legal when the sum is read only by the LayerNorm: the fused kernel does not write the sum out"),
))
