"""The pattern registry: pattern name -> Pattern, and family name -> its patterns."""

from __future__ import annotations

from fxfusion.errors import FxFusionError
from fxfusion.patterns import attention, conv, linear, norm
from fxfusion.patterns.base import ManualVariant, Pattern, Shape

REGISTRY: dict[str, Pattern] = {p.name: p for mod in (linear, conv, attention, norm) for p in mod.PATTERNS}
FAMILIES: dict[str, list[str]] = {}
for _p in REGISTRY.values():
    FAMILIES.setdefault(_p.family, []).append(_p.name)

# The nine patterns of the original calibration suite, by their original names.
ORIGINAL_SUITE = ("linear_bias", "linear_bias_relu", "linear_bias_gelu", "conv2d_relu", "conv2d_bn",
                  "conv2d_bn_relu", "qk_scores", "qk_softmax", "full_attention")


def get_pattern(name: str) -> Pattern:
    try:
        return REGISTRY[name]
    except KeyError:
        raise FxFusionError(f"unknown pattern {name!r}; known: {', '.join(REGISTRY)}") from None


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


__all__ = ["Pattern", "ManualVariant", "Shape", "REGISTRY", "FAMILIES", "ORIGINAL_SUITE", "get_pattern",
           "select_patterns"]
