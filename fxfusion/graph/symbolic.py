"""Symbolic dimensions: which input dimensions a capture leaves open, the guard that checks a call against their
ranges, and the value of a graph's size-only computations (a causal mask built from ``arange(seq)``) at given sizes.

A dynamic capture (:func:`fxfusion.graph.capture.capture` with ``dynamic=``) exports the model with one
``torch.export.Dim`` per named range (``batch``, ``seq``): every input dimension given that name shares one symbol, so
the graph holds for every size in the range and its ops carry symbolic shapes.  :class:`RangeGuard` replaces the
static :class:`fxfusion.graph.runnable.InputGuard` of such a graph: fixed dimensions must match, symbolic ones must lie
in their range (and dimensions sharing a symbol must agree).  :func:`size_only_value` evaluates a node that depends only
on constants and the inputs' sizes -- never on an input's values -- at one assignment of the symbols; it is how a mask
is proved causal at every length of a range (:mod:`fxfusion.planning.dynamic`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from fxfusion.errors import FxFusionError


@dataclass(frozen=True)
class DimRange:
    """A named symbolic dimension and its inclusive range (``batch=1:32``)."""

    name: str
    lo: int
    hi: int

    def points(self) -> tuple[int, int, int]:
        """Smallest, middle and largest: the buckets a shape-dependent decision is measured at."""
        return self.lo, (self.lo + self.hi) // 2, self.hi

    def __str__(self) -> str:
        return f"{self.name}={self.lo}:{self.hi}"


@dataclass(frozen=True)
class DynamicDims:
    """Which dimension of which input is symbolic: ``axes[i]`` maps a dimension of input i to a range's name."""

    ranges: tuple[DimRange, ...]
    axes: tuple[dict[int, str], ...]

    def range(self, name: str) -> DimRange:
        return next(r for r in self.ranges if r.name == name)

    def export_shapes(self) -> tuple[dict[int, Any] | None, ...]:
        """torch.export's ``dynamic_shapes``: one ``Dim`` per range, shared by every dimension that names it."""
        dims = {r.name: torch.export.Dim(r.name, min=r.lo, max=r.hi) for r in self.ranges}
        return tuple({d: dims[name] for d, name in axes.items()} or None for axes in self.axes)

    def sizes_of(self, inputs: tuple) -> dict[str, int]:
        """The size each range has in ``inputs``."""
        return {name: int(inputs[i].shape[d]) for i, axes in enumerate(self.axes) for d, name in axes.items()}

    def resize(self, inputs: tuple, sizes: dict[str, int], seed: int = 0) -> tuple:
        """``inputs`` at ``sizes`` (a range's name -> its size): an input whose shape does not change is kept; another
        is drawn anew -- floating values from a normal of the input's mean and spread, others (token ids, masks)
        sampled from the input's own values, so they stay valid for the model."""
        gen = torch.Generator().manual_seed(seed)
        out = []
        for x, axes in zip(inputs, self.axes):
            if not axes or not isinstance(x, torch.Tensor):
                out.append(x)
                continue
            shape = [sizes.get(axes[d], s) if d in axes else s for d, s in enumerate(x.shape)]
            if list(x.shape) == shape:
                out.append(x)
            elif x.is_floating_point():
                flat = x.detach().double().cpu()
                y = torch.randn(shape, generator=gen, dtype=torch.float64) * float(flat.std()) + float(flat.mean())
                out.append(y.to(x.dtype).to(x.device))
            else:
                flat = x.detach().reshape(-1).cpu()
                picks = torch.randint(0, flat.numel(), shape, generator=gen)
                out.append(flat[picks].to(x.device))
        return tuple(out)


def _symbol(dim: Any):
    """The sympy symbol of a symbolic dimension that is a plain symbol, else None (a fixed size, or an expression)."""
    expr = getattr(getattr(dim, "node", None), "expr", None)
    return expr if expr is not None and getattr(expr, "is_Symbol", False) else None


def is_symbolic(gm: fx.GraphModule) -> bool:
    """Whether any input of ``gm`` has a symbolic dimension."""
    return any(isinstance(v, torch.Tensor) and any(isinstance(s, torch.SymInt) for s in v.shape)
               for v in (n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"))


class RangeGuard(nn.Module):
    """The inputs of a graph captured with symbolic dimensions, checked on every call: fixed dimensions must match,
    symbolic ones lie in their range, and dimensions of one symbol agree."""

    def __init__(self, specs: list[tuple[tuple[int | str, ...], torch.dtype] | None],
                 ranges: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.specs, self.ranges = specs, ranges

    @classmethod
    def of(cls, values: list[Any], range_constraints: dict) -> "RangeGuard":
        """From the recorded values of a graph's inputs and its program's ``range_constraints`` (symbol -> range)."""
        ranges = {str(s): (int(r.lower), int(r.upper)) for s, r in (range_constraints or {}).items()
                  if getattr(s, "is_Symbol", False)}
        specs = []
        for v in values:
            if not isinstance(v, torch.Tensor):
                specs.append(None)
                continue
            dims = tuple(str(_symbol(s)) if _symbol(s) is not None else (int(s) if not isinstance(s, torch.SymInt)
                                                                          else "?") for s in v.shape)
            specs.append((dims, v.dtype))
        return cls(specs, ranges)

    def mismatch(self, args) -> str | None:
        """Why ``args`` are not inputs the graph serves (the first difference), or None when they are."""
        seen: dict[str, int] = {}
        for i, (a, spec) in enumerate(zip(args, self.specs)):
            if spec is None:
                continue
            dims, dtype = spec
            if not isinstance(a, torch.Tensor) or a.dtype != dtype or a.dim() != len(dims):
                got = f"{tuple(a.shape)} {a.dtype}" if isinstance(a, torch.Tensor) else type(a).__name__
                return f"input {i} is {got}, but the planned model serves {self.describe(i)} {dtype}"
            for d, (size, want) in enumerate(zip(a.shape, dims)):
                if isinstance(want, int) and size != want:
                    return f"input {i} has size {size} at dim {d}, but the planned model serves {self.describe(i)}"
                if isinstance(want, str) and want in self.ranges:
                    lo, hi = self.ranges[want]
                    if not lo <= size <= hi:
                        return (f"input {i} has size {size} at dim {d}, outside the planned range {lo}..{hi} "
                                f"({self.describe(i)})")
                    if seen.setdefault(want, size) != size:
                        return f"input {i} has size {size} at dim {d} where another input has {seen[want]}"
        return None

    def describe(self, i: int) -> str:
        dims = self.specs[i][0]
        return "(" + ", ".join(f"{self.ranges[d][0]}..{self.ranges[d][1]}" if isinstance(d, str) and d in self.ranges
                               else str(d) for d in dims) + ")"

    def forward(self, *args) -> None:
        why = self.mismatch(args)
        if why is not None:
            raise FxFusionError(f"{why}: plan it again with a range that holds these inputs")


# -- size-only values --------------------------------------------------------------------------------------------------

SIZE_ONLY_BUDGET = 256  # nodes: a mask's construction (aranges, comparisons, expands); past it nothing is proved


def _is_pure_call(n: fx.Node) -> bool:
    t = n.target
    if n.op != "call_function":
        return False
    if isinstance(t, torch._ops.OpOverload):
        return not t._schema.is_mutable and torch.Tag.nondeterministic_seeded not in t.tags
    return getattr(t, "__module__", None) in ("_operator", "operator") or t in (operator.getitem,)


def size_only_value(gm: fx.GraphModule, node: Any, sizes: dict[str, int], constants: dict[str, torch.Tensor],
                    budget: int = SIZE_ONLY_BUDGET) -> Any:
    """The value of ``node`` when every symbol ``s`` of the graph's inputs is ``sizes[str(s)]``, where it depends only
    on constants (``get_attr``, placeholders in ``constants``), literals and the inputs' *sizes*; None when it reads an
    input's values, an impure op, or more than ``budget`` nodes."""
    values: dict[fx.Node, Any] = {}

    def visit(n: fx.Node) -> bool:
        if n in values:
            return True
        if len(values) >= budget:
            return False
        if n.op == "get_attr":
            obj: Any = gm
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            values[n] = obj.detach() if isinstance(obj, torch.Tensor) else obj
            return True
        if n.op == "placeholder":
            if n.name not in constants:
                return False
            values[n] = constants[n.name].detach()
            return True
        if n.op == "call_function" and n.target is torch.ops.aten.sym_size.int:
            v = n.meta.get("val")
            expr = getattr(getattr(v, "node", None), "expr", None)
            if expr is None:
                values[n] = int(v) if isinstance(v, int) else None
                return values[n] is not None
            subs = {s: sizes[str(s)] for s in expr.free_symbols if str(s) in sizes}
            if len(subs) != len(expr.free_symbols):
                return False
            values[n] = int(expr.subs(subs))
            return True
        if not _is_pure_call(n) or not all(visit(a) for a in n.all_input_nodes):
            return False
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: values[a])
        values[n] = n.target(*args, **kwargs)
        return True

    if not isinstance(node, fx.Node):
        return node
    with torch.no_grad():
        return values[node] if visit(node) else None


def symbol_names(gm: fx.GraphModule) -> dict[str, tuple[int, int]]:
    """Each input symbol of ``gm`` and the (input, dim) it first appears at."""
    out: dict[str, tuple[int, int]] = {}
    for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        v = n.meta.get("val")
        for d, s in enumerate(v.shape if isinstance(v, torch.Tensor) else ()):
            if _symbol(s) is not None:
                out.setdefault(str(_symbol(s)), (i, d))
    return out


def concrete_shape(value: Any, sizes: dict[str, int]) -> tuple[int, ...] | None:
    """A recorded tensor value's shape with its symbols set to ``sizes`` (None where a symbol is not given)."""
    if not isinstance(value, torch.Tensor):
        return None
    out = []
    for s in value.shape:
        expr = getattr(getattr(s, "node", None), "expr", None)
        if expr is None:
            out.append(int(s))
            continue
        subs = {x: sizes[str(x)] for x in expr.free_symbols if str(x) in sizes}
        if len(subs) != len(expr.free_symbols):
            return None
        out.append(int(expr.subs(subs)))
    return tuple(out)
