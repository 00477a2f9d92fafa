"""A runnable copy of a captured graph: the exported program's module with a cheap input guard, or the graph itself,
with the model's tensors bound to lifted parameters (Dynamo subgraphs) so rewrites can read them as constants."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import fx, nn

from fxfusion.errors import FxFusionError
from fxfusion.graph.edit import INPUT_GUARD, bind_constants


class InputGuard(nn.Module):
    """The example inputs' shapes and dtypes, checked on every call: a captured graph is specialised to them.

    It replaces torch.export's own guard function, which costs several times more per call (measured in
    docs/results.md, "Figures from the code's docstrings").
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


def _program_module(program, guard: nn.Module | None = None) -> fx.GraphModule:
    """``program.module()`` with the cheap InputGuard in place of export's guard function (``guard``: the
    :class:`fxfusion.graph.symbolic.RangeGuard` a dynamic capture made)."""
    try:
        gm = program.module(check_guards=False)
    except TypeError:  # a torch whose module() has no check_guards: keep its guards
        return copy.deepcopy(program.module())
    gm = copy.deepcopy(gm)
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if inputs:
        gm.add_submodule(INPUT_GUARD, guard or InputGuard.of([n.meta.get("val") for n in inputs]))
        with gm.graph.inserting_after(inputs[-1]):
            gm.graph.call_module(INPUT_GUARD, tuple(inputs))
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
            gm = _program_module(program, getattr(captured.dynamic, "guard", None))
        else:
            gm = copy.deepcopy(captured.graphs[index])
            if any(n.op == "placeholder" and n.name in (captured.parameters[index] if index < len(
                    captured.parameters) else {}) for n in gm.graph.nodes) and captured.method == "export":
                return None  # lifted parameters and no program to run them with
    # Parameters passed to the graph as inputs (Dynamo subgraphs): their values and their names in the model, so
    # BatchNorm can be folded and the rules that ask who reads a parameter see it (edit.parameter_name).
    names = _placeholder_names(gm, program, captured.parameters[index]) if index < len(captured.parameters) \
        and model is not None else {}
    tensors = dict(model.named_parameters(remove_duplicate=False)) if model is not None else {}
    tensors.update(model.named_buffers(remove_duplicate=False) if model is not None else {})
    bind_constants(gm, {ph: tensors[p] for ph, p in names.items() if p in tensors},
                   {ph: p for ph, p in names.items() if p in tensors})
    return gm


def _placeholder_names(gm: fx.GraphModule, program, names: dict[str, str]) -> dict[str, str]:
    """``CapturedModel.parameters`` (keyed by the captured graph's placeholders) keyed by ``gm``'s placeholders:
    the program's module takes its user inputs in the order of the program's signature, whatever it names them."""
    if program is None:
        return dict(names)
    mine = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    theirs = list(program.graph_signature.user_inputs)
    if len(mine) != len(theirs):
        return {ph: p for ph, p in names.items() if ph in mine}
    return {ph: names[src] for ph, src in zip(mine, theirs) if src in names}
