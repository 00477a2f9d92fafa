"""Applying a plan: rewrite a copy of the captured aten graph so each fusion group runs its winning variant.

:func:`apply` never touches the user's model or the plan's captured graphs; it deep-copies the captured graph and
rewrites the copy, one group at a time:

  1. look the group's nodes up by name in the copy and read the site's structure from the nodes themselves (which
     node is the GEMM, the bias add, the BatchNorm, the softmax...), so a rewrite never trusts a name it cannot see;
  2. check the rewrite's legality where it lives (a conv whose weight feeds another conv is never folded; an
     intermediate used outside the group is never removed) -- a group that fails a check is skipped, with its reason;
  3. insert the variant's nodes just before the node they replace (all their inputs precede it), redirect that
     node's users (each output's, for a site with several: sibling GEMMs), erase the site nodes left without users,
     ``graph.lint()`` and recompile;
  4. once every group is rewritten, make the graph's calls lean (:func:`fxfusion.graph.lean.lean`): aten overloads through
     the public bindings, direct constants, a plain signature -- the captured model's own cost, not a fusion.

The rules live in :mod:`fxfusion.fusions.rewrites_registry`, by variant name (those of :mod:`fxfusion.fusions.registry` and
:mod:`fxfusion.calibration.variants`):

  addmm                 linear chain -> one ``addmm`` (bias in the GEMM); the activation stays as it was
  addmm_epilogue        linear chain + ReLU/GELU(tanh) -> ``_addmm_activation`` (cuBLASLt epilogue; CUDA only);
                        without a bias, with a zero bias made at rewrite time
  merged                sibling GEMMs -> one GEMM on their weights concatenated at rewrite time, a slice per output;
                        gated MLP -> gate and up as one GEMM, then act(first half) * second half
  bn_folded             conv + BatchNorm -> conv with the BatchNorm folded into new weight and bias buffers
  conv_<act>_fused      conv (+ folded BN) + activation -> one oneDNN conv call with the activation as a post-op
                        (CPU: ReLU, SiLU, ReLU6, Hardswish, GELU, Sigmoid, Hardsigmoid) / cuDNN conv+ReLU (CUDA)
  channels_last         conv + BN folded, NHWC input and weights (CUDA only, as measured)
  sdpa                  QK^T -> scale -> mask -> softmax -> PV  ->  ``scaled_dot_product_attention``
  baddbmm_scale         QK^T / sqrt(d) -> ``baddbmm`` with alpha (the scale applied by the GEMM)
  rms_norm_op           x * rsqrt(mean(x^2) + eps) * w -> ``rms_norm``
  triton_add_layernorm  add + LayerNorm -> the Triton kernel (CUDA only)
  triton_add_*norm_sum  add + LayerNorm / RMSNorm, the sum read again -> one Triton call writing both (CUDA only)
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
from fxfusion.graph.lean import lean
from fxfusion.fusions.registry import rewrite_for
from fxfusion.graph.edit import NotApplicable, copy_meta, drop_unused_attributes, is_pure
from fxfusion.graph.runnable import runnable_graph


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
    rewrite = rewrite_for(group.pattern, group.variant)
    if rewrite is None:
        record.detail = f"no rewrite of a {group.pattern} site into variant {group.variant!r}"
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
        if replaced is not None:  # (old, new), or one pair per output of a site with several (sibling GEMMs)
            for old, new in (replaced if isinstance(replaced, list) else [replaced]):
                copy_meta(new, old)
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


def planned_module(model: nn.Module, captured, groups) -> nn.Module:
    if captured.method == "export":
        [gm], records = _rewritten_graphs(model, captured, groups)
        if gm is None:
            raise FxFusionError("the captured graph has its parameters lifted to inputs and no exported program to "
                                "run it with; capture the model with fxfusion.graph.capture.capture")
        gm.fxfusion_rewrites = records
        drop_unused_attributes(gm)  # the tensors the rewrites replaced (a copy's: the model keeps its own)
        return lean(gm)  # rewrites match aten overloads: make the calls lean only once they are done
    return _planned_dynamo(model, captured, groups)


def _rewritten_graphs(model: nn.Module, captured, groups, trial: bool = False
                      ) -> tuple[list[fx.GraphModule | None], list[RewriteRecord]]:
    """A runnable copy of every captured graph with its groups rewritten in order (None for a graph that cannot be
    run: its groups are recorded as not applied), and one record per group.  ``trial`` leaves the code stale and
    copies no graph without groups (None in its place)."""
    modules, records = [], []
    for i in range(len(captured.graphs)):
        mine = [g for g in groups if g.graph_index == i]
        if trial and not mine:
            modules.append(None)
            continue
        runnable = captured.method == "export" or (captured.programs and captured.programs[i] is not None)
        gm = runnable_graph(captured, i, model) if runnable else None
        if gm is None:
            why = ("its parameters are lifted to inputs and there is no exported program to run it with"
                   if captured.method == "export" else "it did not export; it runs unchanged")
            records += [RewriteRecord(g.id, g.pattern, g.variant, False, f"subgraph {i}: {why}") for g in mine]
        else:
            # the code generated once, after every group (each still transactional and linted): generating it
            # after each of EfficientNet-B0's 81 groups was most of its rewriting (saved.planned_once, 2026-12-07)
            records += [rewrite_group(gm, g, recompile=False) for g in mine]
            if not trial and mine and captured.method != "export":  # an exported graph's: lean() generates it
                gm.recompile()
        modules.append(gm)
    return modules, records


def trial_rewrites(model: nn.Module, captured, groups) -> list[RewriteRecord]:
    """What :func:`fxfusion.planning.apply.apply` would do with ``groups``, on copies of the captured graphs that are
    then dropped: one record per group, applied or not (and why not).  Cost: a copy of each graph and the rewrites;
    nothing is compiled or run."""
    return _rewritten_graphs(model, captured, groups, trial=True)[1]


def copy_model(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(model)


def captured_module(model: nn.Module, captured) -> nn.Module:
    """The captured model with no group applied: what a planned model runs, minus the rewrites."""
    if not isinstance(model, nn.Module):
        raise FxFusionError(f"captured_module() takes an nn.Module, got {type(model).__name__}")
    return planned_module(model, captured, [])


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
    modules, records = _rewritten_graphs(model, captured, groups)
    modules = [lean(gm) if gm is not None else None for gm in modules]
    backend = _ReplayBackend(modules, list(captured.graph_inputs))
    planned = torch.compile(copy_model(model), backend=backend, dynamic=False)
    planned.fxfusion_rewrites = records
    planned.fxfusion_backend = backend
    return planned
