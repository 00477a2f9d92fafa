"""The registry of fusion families: pattern name -> Pattern, the matchers in the order they run, and the rewrite of
each (pattern, variant).

Adding a fusion is a new family module (its patterns, matchers and rewrites side by side; see
docs/architecture.md) and one entry in :data:`BUILTIN` -- or :func:`register` at run time, which is how a test or a
user's own package adds one without touching fxfusion.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from fxfusion.errors import FxFusionError
from fxfusion.fusions import attention, conv, linear, linear_bn, norm, rotary, sibling
from fxfusion.fusions.base import Family, ManualVariant, Matcher, Pattern, Shape
from fxfusion.fusions.compiled import COMPILE_MODES, rewrite_compiled

# Order matters: a larger pattern claims its nodes before a smaller one can (attention's GEMMs are not linears;
# sibling GEMMs -- q/k/v, gate/up -- are grouped before the linear family takes them one by one; a linear read by a
# BatchNorm is a linear_bn site before either would take its GEMM).
BUILTIN: tuple[Family, ...] = (attention.FAMILY, conv.FAMILY, linear_bn.FAMILY, sibling.FAMILY, linear.FAMILY,
                               norm.FAMILY, rotary.FAMILY)

# The live tables, mutated in place by register/unregister (modules that imported them see the change).
FAMILY_LIST: list[Family] = []
REGISTRY: dict[str, Pattern] = {}  # pattern name -> Pattern
FAMILIES: dict[str, list[str]] = {}  # family name -> its pattern names
MATCHERS: list[Matcher] = []  # in the order they run

# The nine patterns of the original calibration suite, by their original names.
ORIGINAL_SUITE = ("linear_bias", "linear_bias_relu", "linear_bias_gelu", "conv2d_relu", "conv2d_bn",
                  "conv2d_bn_relu", "qk_scores", "qk_softmax", "full_attention")


def _rebuild() -> None:
    REGISTRY.clear(), FAMILIES.clear(), MATCHERS.clear()
    for fam in FAMILY_LIST:
        for p in fam.patterns:
            if p.name in REGISTRY:
                raise FxFusionError(f"pattern {p.name!r} of family {fam.name!r} is already registered")
            REGISTRY[p.name] = p
            FAMILIES.setdefault(p.family, []).append(p.name)
        MATCHERS.extend(fam.matchers)


def register(family: Family, first: bool = False) -> None:
    """Add a family; ``first`` runs its matchers before the others (a pattern that contains theirs)."""
    if any(f.name == family.name for f in FAMILY_LIST):
        raise FxFusionError(f"a fusion family named {family.name!r} is already registered")
    FAMILY_LIST.insert(0, family) if first else FAMILY_LIST.append(family)
    try:
        _rebuild()
    except FxFusionError:
        FAMILY_LIST.remove(family)
        _rebuild()
        raise


def unregister(name: str) -> None:
    FAMILY_LIST[:] = [f for f in FAMILY_LIST if f.name != name]
    _rebuild()


@contextmanager
def registered(family: Family, first: bool = False) -> Iterator[Family]:
    """The family registered for the duration of a ``with`` block."""
    register(family, first)
    try:
        yield family
    finally:
        unregister(family.name)


for _family in BUILTIN:
    register(_family)


def rewrite_for(pattern: str, variant: str) -> Callable | None:
    """The rewrite that puts ``variant`` of ``pattern`` into a graph, None when there is none.  Manual variants carry
    their own; the compile variants share one (the group's nodes become a compiled submodule)."""
    p = REGISTRY.get(pattern)
    if p is None:
        return None
    if variant in COMPILE_MODES:
        return rewrite_compiled
    mv = p.variant(variant)
    return mv.rewrite if mv is not None else None


def select_patterns(spec: str | None) -> list[Pattern]:
    """'all', or a comma list mixing family names ('linear') and pattern names ('attention')."""
    if not spec or spec == "all":
        return list(REGISTRY.values())
    chosen: list[str] = []
    for word in (w.strip() for w in spec.split(",")):
        if not word:
            continue
        if word in FAMILIES:
            names = FAMILIES[word]
        elif word in REGISTRY:
            names = [word]
        else:
            raise FxFusionError(
                f"unknown pattern or family {word!r}; families: {', '.join(FAMILIES)}; patterns: {', '.join(REGISTRY)}"
            )
        chosen.extend(n for n in names if n not in chosen)
    if not chosen:
        raise FxFusionError("--patterns named no pattern")
    return [REGISTRY[n] for n in chosen]


__all__ = ["Family", "Matcher", "Pattern", "ManualVariant", "Shape", "REGISTRY", "FAMILIES", "MATCHERS",
           "ORIGINAL_SUITE", "register", "unregister", "registered", "rewrite_for", "select_patterns"]
