"""Applying a plan: rewrite a copy of the captured aten graph so each fusion group runs its winning variant.

:func:`apply` never touches the user's model or the plan's captured graphs; it deep-copies the captured graph and
rewrites the copy, one group at a time:

  1. look the group's nodes up by name in the copy and read the site's structure from the nodes themselves (which
     node is the GEMM, the bias add, the BatchNorm, the softmax...), so a rewrite never trusts a name it cannot see;
  2. check the rewrite's legality where it lives (a conv whose weight feeds another conv is never folded; an
     intermediate used outside the group is never removed) -- a group that fails a check is skipped, with its reason;
  3. insert the variant's nodes just before the node they replace (all their inputs precede it), redirect that
     node's users, erase the site nodes left without users, ``graph.lint()`` and recompile;
  4. once every group is rewritten, make the graph's calls lean (:func:`fxfusion.lean.lean`): aten overloads through
     the public bindings, direct constants, a plain signature -- the captured model's own cost, not a fusion.

The rules live in :mod:`fxfusion.rewrites`, by variant name (those of :mod:`fxfusion.patterns` and
:mod:`fxfusion.variants`):

  addmm                 linear chain -> one ``addmm`` (bias in the GEMM); the activation stays as it was
  addmm_epilogue        linear chain + ReLU/GELU(tanh) -> ``_addmm_activation`` (cuBLASLt epilogue; CUDA only)
  bn_folded             conv + BatchNorm -> conv with the BatchNorm folded into new weight and bias buffers
  conv_relu_fused       conv (+ folded BN) + ReLU -> one oneDNN (CPU) / cuDNN (CUDA) conv+ReLU call
  channels_last         conv + BN folded, NHWC input and weights (CUDA only, as measured)
  sdpa                  QK^T -> scale -> mask -> softmax -> PV  ->  ``scaled_dot_product_attention``
  baddbmm_scale         QK^T / sqrt(d) -> ``baddbmm`` with alpha (the scale applied by the GEMM)
  rms_norm_op           x * rsqrt(mean(x^2) + eps) * w -> ``rms_norm``
  triton_add_layernorm  add + LayerNorm -> the Triton kernel (CUDA only)
  compile, compile_*    the group's nodes become a submodule run through ``torch.compile``
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import fx, nn

from fxfusion.errors import FxFusionError
from fxfusion.lean import lean
from fxfusion.rewrites import REWRITES, NotApplicable


@dataclass
class RewriteRecord:
    site_id: str
    pattern: str
    variant: str
    applied: bool
    detail: str  # what was done, or why it was not
    new_nodes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the driver ----------------------------------------------------------------------------------------------------

def _erase_dead(g: fx.Graph, nodes: list[fx.Node]) -> None:
    """Erase the site nodes left without users, last first, then whatever only they read: constants and pure ops
    (a causal mask computed from a buffer, once SDPA takes is_causal instead)."""
    from fxfusion.rewrites.graph import is_pure

    feeders: list[fx.Node] = []
    erased: set[fx.Node] = set()
    for n in reversed(nodes):
        if n.graph is g and not n.users and n.op != "output":
            feeders.extend(n.all_input_nodes)
            g.erase_node(n)
            erased.add(n)
    while feeders:
        n = feeders.pop()
        if n not in erased and n.graph is g and not n.users and (n.op == "get_attr" or is_pure(n)):
            feeders.extend(n.all_input_nodes)
            g.erase_node(n)
            erased.add(n)


def rewrite_group(gm: fx.GraphModule, group, recompile: bool = True) -> RewriteRecord:
    """Apply one group's variant to ``gm`` in place; a group that cannot be applied leaves ``gm`` as it was.
    ``recompile=False`` leaves the module's code stale: for callers that only read the rewritten graph."""
    record = RewriteRecord(group.site_id, group.pattern, group.variant, False, "")
    rewrite = REWRITES.get(group.variant)
    if rewrite is None:
        record.detail = f"no rewrite for variant {group.variant!r}"
        return record
    by_name = {n.name: n for n in gm.graph.nodes}
    missing = [name for name in group.nodes if name not in by_name]
    if missing:
        record.detail = f"nodes {', '.join(missing)} are not in the graph"
        return record
    nodes = [by_name[name] for name in group.nodes]
    before = {n.name for n in gm.graph.nodes}
    buffers_before = set(gm._buffers)
    try:
        replaced = rewrite(gm, nodes, group)
        if replaced is not None:
            old, new = replaced
            new.meta.update({k: v for k, v in old.meta.items() if k in ("val", "tensor_meta", "stack_trace",
                                                                          "nn_module_stack")})
            old.replace_all_uses_with(new)
            _erase_dead(gm.graph, nodes)
        gm.graph.lint()
    except NotApplicable as exc:
        for n in reversed([n for n in gm.graph.nodes if n.name not in before]):
            gm.graph.erase_node(n)
        for name in set(gm._buffers) - buffers_before:
            del gm._buffers[name]
        record.detail = str(exc)
        return record
    if recompile:
        gm.recompile()
    record.applied = True
    record.new_nodes = [n.name for n in gm.graph.nodes if n.name not in before]
    record.detail = f"{group.variant}: {len(nodes)} nodes -> {len(record.new_nodes)}"
    return record


class InputGuard(nn.Module):
    """The example inputs' shapes and dtypes, checked on every call: a captured graph is specialised to them.

    It replaces torch.export's own guard function, which costs about 10 us a call (measured on this project's 2-core
    CPU: 193 -> 183 us per forward of models/resnet_basic.py); this one costs about 1 us.
    """

    def __init__(self, specs: list[tuple[tuple[int, ...], torch.dtype] | None]) -> None:
        super().__init__()
        self.specs = specs

    @classmethod
    def of(cls, inputs) -> "InputGuard":
        """The guard for these example inputs (a non-tensor input is not checked)."""
        return cls([(tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else None for x in inputs])

    def mismatch(self, args) -> str | None:
        """Why ``args`` are not the captured inputs (the first input that differs), or None when they are."""
        for i, (a, spec) in enumerate(zip(args, self.specs)):
            if spec is not None and (not isinstance(a, torch.Tensor) or tuple(a.shape) != spec[0]
                                     or a.dtype != spec[1]):
                got = f"{tuple(a.shape)} {a.dtype}" if isinstance(a, torch.Tensor) else type(a).__name__
                return f"input {i} is {got}, but the planned model was captured for {spec[0]} {spec[1]}"
        return None

    def forward(self, *args) -> None:
        why = self.mismatch(args)
        if why is not None:
            raise FxFusionError(f"{why}: plan it again for these inputs")


def _program_module(program) -> fx.GraphModule:
    """``program.module()`` with the cheap InputGuard in place of export's guard function."""
    try:
        gm = program.module(check_guards=False)
    except TypeError:  # a torch whose module() has no check_guards: keep its guards
        return copy.deepcopy(program.module())
    gm = copy.deepcopy(gm)
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if inputs:
        gm.add_submodule("_fxfusion_input_guard", InputGuard.of([n.meta.get("val") for n in inputs]))
        with gm.graph.inserting_after(inputs[-1]):
            gm.graph.call_module("_fxfusion_input_guard", tuple(inputs))
        gm.recompile()
    return gm


def runnable_graph(captured, index: int, model: nn.Module | None = None) -> fx.GraphModule | None:
    """A fresh, runnable copy of captured graph ``index``: the exported program's module (parameters as get_attr
    constants, same compute node names as the captured graph), or the captured graph itself when it has no program.
    """
    program = captured.programs[index] if index < len(captured.programs) else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pytree spec deprecation notes on deepcopy
        if program is not None:
            gm = _program_module(program)
        else:
            gm = copy.deepcopy(captured.graphs[index])
            if any(n.op == "placeholder" and n.name in (captured.parameters[index] if index < len(
                    captured.parameters) else {}) for n in gm.graph.nodes) and captured.method == "export":
                return None  # lifted parameters and no program to run them with
    # Parameters passed to the graph as inputs (Dynamo subgraphs): their values, so BatchNorm can be folded.
    names = captured.parameters[index] if index < len(captured.parameters) and model is not None else {}
    tensors = dict(model.named_parameters(remove_duplicate=False)) if model is not None else {}
    tensors.update(model.named_buffers(remove_duplicate=False) if model is not None else {})
    gm.__dict__["_fxfusion_constants"] = {ph: tensors[p] for ph, p in names.items() if p in tensors}
    return gm


def _check_model(model, plan) -> None:
    from fxfusion.plan import FusionPlan

    if not isinstance(plan, FusionPlan):
        raise FxFusionError(f"apply() takes a FusionPlan, got {type(plan).__name__}; make one with fxfusion.plan()")
    if not isinstance(model, nn.Module):
        raise FxFusionError(f"apply() takes the nn.Module the plan was made for, got {type(model).__name__}")


def _planned(model: nn.Module, captured, groups) -> nn.Module:
    if captured.method == "export":
        gm = runnable_graph(captured, 0, model)
        if gm is None:
            raise FxFusionError("the captured graph has its parameters lifted to inputs and no exported program to "
                                "run it with; capture the model with fxfusion.capture.capture")
        gm.fxfusion_rewrites = [rewrite_group(gm, g) for g in groups]
        return lean(gm)  # rewrites match aten overloads: make the calls lean only once they are done
    return _planned_dynamo(model, captured, groups)


def _copy(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(model)


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


def apply(model: nn.Module, plan, other_shapes: str = "error") -> nn.Module:
    """The planned model: a rewritten copy of the plan's captured graph(s).  ``model`` and the plan are unchanged.

    The returned module carries ``fxfusion_rewrites``: one :class:`RewriteRecord` per group, applied or not (and
    why not).  When no group applies it is a plain copy of ``model``: running the captured graph instead would only
    add its call overhead.  For a Dynamo capture (graph breaks) it is the model run under torch.compile with a
    backend that hands Dynamo the rewritten subgraphs in capture order (a subgraph at other shapes runs unchanged).

    An exported graph is specialised to the example inputs' shapes and dtypes.  ``other_shapes`` says what a call
    with other inputs does: ``"error"`` (one-line FxFusionError: plan again) or ``"original"`` (a
    :class:`ShapeDispatch` runs a copy of the original model for them, unfused, with a warning once per signature).
    """
    _check_model(model, plan)
    if other_shapes not in OTHER_SHAPES:
        raise FxFusionError(f"other_shapes must be one of {', '.join(OTHER_SHAPES)}, got {other_shapes!r}")
    planned = _planned(model, plan.captured, plan.groups) if plan.groups else None
    records = getattr(planned, "fxfusion_rewrites", [])
    if planned is None or not any(r.applied for r in records):
        planned = _copy(model)
        planned.fxfusion_rewrites = records
    elif other_shapes == "original" and plan.captured.method == "export":
        planned = ShapeDispatch(planned, _copy(model), InputGuard.of(plan.captured.example_inputs))
    return planned


def captured_module(model: nn.Module, captured) -> nn.Module:
    """The captured model with no group applied: what a planned model runs, minus the rewrites."""
    if not isinstance(model, nn.Module):
        raise FxFusionError(f"captured_module() takes an nn.Module, got {type(model).__name__}")
    return _planned(model, captured, [])


class _ReplayBackend:
    """A Dynamo backend that returns, for the i-th subgraph Dynamo compiles, the i-th rewritten captured graph.

    Dynamo compiles the subgraphs of one model in the order they run, as it did during capture; a subgraph whose
    inputs do not match the captured one's shapes and dtypes (a recompile, another path) runs unchanged.
    """

    def __init__(self, modules: list[nn.Module | None], expected: list[tuple]) -> None:
        self.modules, self.expected, self.calls, self.mismatches = modules, expected, 0, []

    @staticmethod
    def _signature(inputs) -> list:
        return [(tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x) for x in inputs]

    def __call__(self, gm: fx.GraphModule, example_inputs):
        i, self.calls = self.calls, self.calls + 1
        if i < len(self.modules) and self.modules[i] is not None:
            if self._signature(example_inputs) == self._signature(self.expected[i]):
                module = self.modules[i]
                return lambda *args: module(*args)
            self.mismatches.append(f"subgraph {i} does not match the captured one; it runs unchanged")
        return gm.forward


def _planned_dynamo(model: nn.Module, captured, groups) -> nn.Module:
    modules, records = [], []
    for i in range(len(captured.graphs)):
        mine = [g for g in groups if g.graph_index == i]
        gm = runnable_graph(captured, i, model) if captured.programs and captured.programs[i] is not None else None
        if gm is None:
            records += [RewriteRecord(g.id, g.pattern, g.variant, False, f"subgraph {i} did not export; "
                                      "it runs unchanged") for g in mine]
        else:
            records += [rewrite_group(gm, g) for g in mine]
            gm = lean(gm)
        modules.append(gm)
    backend = _ReplayBackend(modules, list(captured.graph_inputs))
    planned = torch.compile(_copy(model), backend=backend, dynamic=False)
    planned.fxfusion_rewrites = records
    planned.fxfusion_backend = backend
    return planned
