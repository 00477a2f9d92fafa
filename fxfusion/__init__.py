"""fxfusion: which operator fusions pay off on this hardware, at this shape and dtype -- measured, not guessed.

The package's layers, bottom to top (docs/architecture.md draws them):

  measure/      timing, statistics, correctness, kernel counting, hardware peaks, devices and dtypes
  graph/        capture (torch.export / Dynamo), fx node readers and editors, lean calls, model loading, partitions
  fusions/      the fusion families (each: patterns, matchers, rewrites side by side) and their registry
  profiles/     the profile model, its schema, validation and comparison
  calibration/  measuring the pattern library: variants, ceilings, profiles
  planning/     deciding sites, plans, in-model timing, applying and verifying, the pipelines
  reports/      HTML, plots, text
  cli/          the typer commands, on top and thin

The public names below are imported on first use, so ``import fxfusion`` (and the CLI's start) stays light.
"""

from fxfusion.errors import FxFusionError, FxFusionWarning

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "Profile": "fxfusion.profiles.profile", "Decision": "fxfusion.profiles.profile",
    "Entry": "fxfusion.profiles.profile",
    "calibrate": "fxfusion.calibration.calibrate",
    "plan": "fxfusion.planning.pipeline", "apply_and_verify": "fxfusion.planning.pipeline",
    "FusionPlan": "fxfusion.planning.plan",
    "apply": "fxfusion.planning.saved",  # a FusionPlan, or a saved plan (load_plan): saved.apply dispatches
    "save_plan": "fxfusion.planning.saved", "load_plan": "fxfusion.planning.saved",
    "verify_plan": "fxfusion.planning.verify",
    "analyze": "fxfusion.planning.analyze",
    "capture": "fxfusion.graph.capture",
    "find_sites": "fxfusion.fusions.match",
    "partition": "fxfusion.graph.partition", "plan_operator_support": "fxfusion.graph.partition",
    "register_family": "fxfusion.fusions.registry",
    "calibrate_linear_fusion_patterns": "fxfusion.calibration.compat",
    "calibrate_conv_fusion_patterns": "fxfusion.calibration.compat",
    "calibrate_attention_fusion_patterns": "fxfusion.calibration.compat",
}
_RENAMED = {"register_family": "register"}


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'fxfusion' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_PUBLIC[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_PUBLIC))


__all__ = ["FxFusionError", "FxFusionWarning", "__version__", *_PUBLIC]
