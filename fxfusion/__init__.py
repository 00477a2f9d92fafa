"""fxfusion: which operator fusions pay off on this hardware, at this shape and dtype -- measured, not guessed."""

__version__ = "0.1.0"

from fxfusion.errors import FxFusionError  # noqa: E402
from fxfusion.profile import Decision, Entry, Profile  # noqa: E402


# Imported eagerly, not wrapped lazily: the submodule fxfusion.calibrate shares the function's name, and importing
# the submodule later would otherwise rebind the package attribute to the module.
from fxfusion.calibrate import calibrate  # noqa: E402
# Likewise for plan (the submodule fxfusion.plan holds FusionPlan).
from fxfusion.plan import FusionPlan, plan  # noqa: E402


def apply(model, plan):
    """The planned model: the plan's groups rewritten into their winning variants; see :func:`fxfusion.rewrite.apply`."""
    from fxfusion.rewrite import apply as _apply

    return _apply(model, plan)


def __getattr__(name):  # the compatibility functions of the original suite, imported on first use
    if name in ("calibrate_linear_fusion_patterns", "calibrate_conv_fusion_patterns",
                "calibrate_attention_fusion_patterns"):
        from fxfusion import compat

        return getattr(compat, name)
    raise AttributeError(name)


__all__ = ["FxFusionError", "Profile", "Decision", "Entry", "calibrate", "plan", "apply", "FusionPlan", "__version__"]
