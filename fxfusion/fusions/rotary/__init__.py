"""Rotary position embeddings as Hugging Face writes them (``apply_rotary_pos_emb``): ``x * cos + rotate_half(x) *
sin``, rotate_half a slice / neg / cat chain -- one site per tensor (q, k), rewritten to one roll and one addcmul.

Its matcher runs after the attention family's (see fusions.registry.BUILTIN): the chain ends where the attention
site begins (q and k as they enter the scores), so the two never share a node.
"""

from fxfusion.fusions.base import Family, Matcher
from fxfusion.fusions.rotary.match import match_rotary
from fxfusion.fusions.rotary.pattern import PATTERNS

FAMILY = Family("rotary", tuple(PATTERNS), (
    Matcher(("cat",), match_rotary,
            "legal when the halves, their negation, the cat and the two products are read by nothing else and cos and "
            "sin broadcast over x without changing its shape (the rolled form writes only the sum)"),
))
