"""Attention: QK^T -> scale -> mask -> softmax -> PV as written in eager code, and what replaces it (SDPA, baddbmm)."""

from fxfusion.fusions.attention.match import match_attention, match_sdpa
from fxfusion.fusions.attention.pattern import PATTERNS
from fxfusion.fusions.base import Family, Matcher

FAMILY = Family("attention", tuple(PATTERNS), (
    Matcher(("sdpa",), match_sdpa, "legal as is: SDPA is already one fused kernel; reported, never rewritten"),
    Matcher(("softmax",), match_attention,
            "legal when the scores and probabilities are read by nothing else: SDPA never materialises them"),
))
