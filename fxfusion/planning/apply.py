"""``apply(model, plan)``: the planned model, a rewritten copy of the plan's captured graph(s).

The rewriting itself is :mod:`fxfusion.planning.rewrite`; this module checks what it is given and decides what a
call at other input shapes does.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from fxfusion.errors import FxFusionError
from fxfusion.graph.runnable import InputGuard
from fxfusion.planning.candidates import PLANNED, ChannelsLast
from fxfusion.planning.configs import Compiled, Spec
from fxfusion.planning.plan import FusionPlan
from fxfusion.planning.rewrite import captured_module, copy_model, planned_module


def _check_model(model, plan) -> None:
    if not isinstance(plan, FusionPlan):
        raise FxFusionError(f"apply() takes a FusionPlan, got {type(plan).__name__}; make one with fxfusion.plan()")
    if not isinstance(model, nn.Module):
        raise FxFusionError(f"apply() takes the nn.Module the plan was made for, got {type(model).__name__}")


OTHER_SHAPES = ("error", "original")


class ShapeDispatch(nn.Module):
    """A planned graph for its example shapes, and a copy of the original model for every other input.

    The captured graph is specialised to the shapes and dtypes it was captured at; this runs it where they match and
    the original model elsewhere (warning once per new signature), so a planned model can serve a batch of another
    size, unfused.  Plan again at a shape to fuse there.
    """

    def __init__(self, planned: nn.Module, original: nn.Module, guard: InputGuard) -> None:
        super().__init__()
        self.planned, self.original, self.guard = planned, original, guard
        self.fxfusion_rewrites = getattr(planned, "fxfusion_rewrites", [])
        self._warned: set = set()

    def forward(self, *args):
        if len(args) == len(self.guard.specs) and self.guard.mismatch(args) is None:
            return self.planned(*args)
        key = tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else type(a) for a in args)
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"fxfusion: inputs {key} differ from the planned shapes {self.guard.specs}; running the "
                          "original model, unfused (plan again at these shapes to fuse them)", stacklevel=2)
        return self.original(*args)


def apply(model: nn.Module, plan, other_shapes: str = "error", candidate: str | None = None) -> nn.Module:
    """The planned model: a rewritten copy of the plan's captured graph(s).  ``model`` and the plan are unchanged.

    The returned module carries ``fxfusion_rewrites``: one :class:`RewriteRecord` per group, applied or not (and
    why not).  When no group applies it is a plain copy of ``model``: running the captured graph instead would only
    add its call overhead.  For a Dynamo capture (graph breaks) it is the model run under torch.compile with a
    backend that hands Dynamo the rewritten subgraphs in capture order (a subgraph at other shapes runs unchanged).

    An exported graph is specialised to the example inputs' shapes and dtypes.  ``other_shapes`` says what a call
    with other inputs does: ``"error"`` (one-line FxFusionError: plan again) or ``"original"`` (a
    :class:`ShapeDispatch` runs a copy of the original model for them, unfused, with a warning once per signature).

    ``candidate`` asks for one of the candidates (:mod:`fxfusion.planning.configs` reads their names):
    ``"planned"`` (the rewritten graph, the rest eager), ``"eager"`` (a copy of the original), and compiled ones --
    ``"compile"``, ``"compile+freezing"``, ``"compile+cudagraphs"``, ``"planned+compile+freezing"``,
    ``"captured+compile"``, ``"planned+channels_last+compile"``, ... -- each built by :func:`candidate_module` as it
    was measured (a planned compiled candidate applies the groups its context kept, ``FusionPlan.groups_for``) and
    compiled in its configuration on its first call (:class:`fxfusion.planning.configs.Compiled`).  By default it is
    the candidate the plan chose when its candidates were measured end to end (``plan.choice``, set by
    :func:`fxfusion.planning.pipeline.apply_and_verify` and ``analyze --apply``), else ``"planned"``.  The returned
    module says which in ``fxfusion_candidate``.
    """
    _check_model(model, plan)
    if other_shapes not in OTHER_SHAPES:
        raise FxFusionError(f"other_shapes must be one of {', '.join(OTHER_SHAPES)}, got {other_shapes!r}")
    name = candidate or (plan.choice or {}).get("chosen") or PLANNED
    spec = Spec.parse(name)
    module = candidate_module(spec, model, plan, other_shapes=other_shapes)
    records = getattr(module, "fxfusion_rewrites", [])
    if spec.config is not None:
        module = Compiled(module, spec.config)
    module.fxfusion_rewrites, module.fxfusion_candidate = records, spec.name
    return module


def candidate_module(spec: Spec, model: nn.Module, plan: FusionPlan, planned: nn.Module | None = None,
                     other_shapes: str = "error") -> nn.Module:
    """The module of candidate ``spec``, not yet compiled: what is measured and what ``apply`` hands back.  The
    rewrites applied are the groups the spec's context keeps (``plan.groups_for``); ``planned`` (the model with every
    group applied) is reused where that is all of them."""
    if spec.rewrites:
        groups = plan.groups_for(spec.context)
        base = planned if planned is not None and len(groups) == len(plan.groups) else _planned(
            model, dataclasses.replace(plan, groups=groups), other_shapes)
    elif spec.captured:
        base = captured_module(model, plan.captured)
    else:
        base = copy_model(model)
        base.fxfusion_rewrites = []
    if not spec.channels_last:
        return base
    layout = ChannelsLast(base)  # a copy of base: its rewrite records stay on the wrapper
    layout.fxfusion_rewrites = getattr(base, "fxfusion_rewrites", [])
    return layout


def every_group(model: nn.Module, plan: FusionPlan) -> nn.Module:
    """The model with every group of the plan applied, whatever a context left out: what the verification checks
    against float64 (each candidate applying fewer is checked again on its own)."""
    _check_model(model, plan)
    return _planned(model, plan, "error")


def _planned(model: nn.Module, plan: FusionPlan, other_shapes: str) -> nn.Module:
    planned = planned_module(model, plan.captured, plan.groups) if plan.groups else None
    records = getattr(planned, "fxfusion_rewrites", [])
    if planned is None or not any(r.applied for r in records):
        planned = copy_model(model)
        planned.fxfusion_rewrites = records
    elif other_shapes == "original" and plan.captured.method == "export":
        guard = getattr(plan.captured.dynamic, "guard", None)  # a dynamic capture: its ranges
        planned = ShapeDispatch(planned, copy_model(model), guard or InputGuard.of(plan.captured.example_inputs))
    return planned


