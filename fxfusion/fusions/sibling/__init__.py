"""Sibling GEMMs (linears reading one input, merged into one GEMM on weights concatenated at load) and gated MLPs
(the gate and up projections merged, then act(first half) * second half).

One family, because both are the same rewrite -- concatenate the weights once, run one GEMM, slice -- and the gated
site is the sibling site of an MLP whose product it also takes.  Its matchers run before the linear family's (see
fusions.registry.BUILTIN): a GEMM a sibling site takes is not a linear site, and a GEMM no group takes is left to it.
"""

from fxfusion.fusions.base import Family, Matcher
from fxfusion.fusions.sibling.match import match_gated, match_gated_split, match_siblings, match_split_siblings
from fxfusion.fusions.sibling.pattern import PATTERNS

FAMILY = Family("sibling", tuple(PATTERNS), (
    Matcher(("linear", "matmul"), match_gated_split,
            "legal when one bias-free GEMM with a parameter weight is split in two equal halves along its last dim, "
            "read only by act(first half) * second half (the projections pre-fused in the checkpoint)"),
    Matcher(("linear", "matmul"), match_gated,
            "legal when gate and up read the very same input, their weights are parameters, and each projection and "
            "the activation are read only by the product (the merged GEMM never writes them apart)"),
    Matcher(("linear", "matmul"), match_siblings,
            "legal when the siblings read the very same input node and their weights (and biases) are parameters of "
            "one dtype; their outputs may be read anywhere (each becomes a slice of the merged output)"),
    Matcher(("linear", "matmul"), match_split_siblings,
            "already fused (never rewritten): one bias-free GEMM with a parameter weight whose output is split in 2 or "
            "3 contiguous parts along its last dim, the projections pre-fused in the checkpoint (q/k/v)"),
))
