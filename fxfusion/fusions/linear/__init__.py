"""Linear: GEMM + bias (+ activation), as one addmm or the cuBLASLt epilogue."""

from fxfusion.fusions.base import Family, Matcher
from fxfusion.fusions.linear.match import match_linear
from fxfusion.fusions.linear.pattern import PATTERNS

FAMILY = Family("linear", tuple(PATTERNS), (
    Matcher(("linear", "addmm", "matmul"), match_linear,
            "legal when the GEMM's output is read only by the bias add / activation that the epilogue absorbs"),
))
