"""Symbolic dimensions: which input dimensions a capture leaves open, the guard that checks a call against their
ranges, and the value of a graph's size-only computations (a causal mask built from ``arange(seq)``) at given sizes.

A dynamic capture (:func:`fxfusion.graph.capture.capture` with ``dynamic=``) exports the model with one
``torch.export.Dim`` per named range (``batch``, ``seq``): every input dimension given that name shares one symbol, so
the graph holds for every size in the range and its ops carry symbolic shapes.  :class:`RangeGuard` replaces the
static :class:`fxfusion.graph.runnable.InputGuard` of such a graph: fixed dimensions must match, symbolic ones must lie
in their range (and dimensions sharing a symbol must agree).  :func:`size_only_value` evaluates a node that depends only
on constants and the inputs' sizes -- never on an input's values -- at one assignment of the symbols; it is how a mask
is proved causal at every length of a range (:mod:`fxfusion.planning.dynamic`).  :class:`SymbolicGraph` keeps what the
capture knew of its symbols (ranges, guard, every node's shape in symbols) before matching, which reads sizes as
integers, specialised the recorded values to the example inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy
import torch
from torch import fx, nn

from fxfusion.errors import FxFusionError
from fxfusion.graph.edit import COMPUTE, UNKNOWN, attribute, evaluate_ahead


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


def sizes_text(sizes: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sizes.items())


def _symbol(dim: Any):
    """The sympy symbol of a symbolic dimension that is a plain symbol, else None (a fixed size, or an expression)."""
    expr = getattr(getattr(dim, "node", None), "expr", None)
    return expr if expr is not None and getattr(expr, "is_Symbol", False) else None


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


# -- a dynamic capture's symbols ---------------------------------------------------------------------------------------

def _recorded(dim: Any) -> Any:
    """A dimension as recorded at capture: an int, or the sympy expression of its symbols as export made it (``_expr``:
    later guards -- matching reads sizes as integers -- replace a symbol by its example value in ``expr``)."""
    node = getattr(dim, "node", None)
    return int(dim) if node is None else getattr(node, "_expr", None) or node.expr


def _text(value: Any, named: dict) -> str:
    """A recorded value in words, its symbols renamed (``named``): what a graph's fingerprint hashes."""
    if isinstance(value, torch.Tensor):
        dims = [_recorded(x) for x in value.shape]
        return str(value.dtype).removeprefix("torch.") + "[" + ", ".join(
            str(d if isinstance(d, int) else d.xreplace(named)) for d in dims) + "]"
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_text(v, named) for v in value) + ")"
    return type(value).__name__ if value is not None else "-"


@dataclass
class SymbolicGraph:
    """What a dynamic capture knows about its symbols, read at capture before anything specialises them: the ranges,
    the guard, each symbol's range name, and every node's shape in symbols."""

    dims: DynamicDims
    guard: RangeGuard
    symbols: dict[str, str]  # symbol -> the range it stands for ("s70" -> "seq")
    shapes: dict[str, tuple]  # node name -> its shape (ints and sympy expressions)
    texts: dict[str, str] = field(default_factory=dict)  # node name -> spec_text
    buckets: list = field(default_factory=list)  # per site, how each bucket planned it (fxfusion.planning.dynamic)

    @classmethod
    def of(cls, program: Any, dims: DynamicDims) -> "SymbolicGraph":
        user = list(program.graph_signature.user_inputs)
        nodes = {n.name: n for n in program.graph_module.graph.nodes}
        values = [nodes[name].meta.get("val") for name in user]
        guard = RangeGuard.of(values, program.range_constraints)
        symbols = {}
        for spec, axes in zip(guard.specs, dims.axes):
            for d, name in axes.items():
                if spec is not None and isinstance(spec[0][d], str):
                    symbols[spec[0][d]] = name
        shapes = {n.name: tuple(_recorded(x) for x in n.meta["val"].shape) for n in nodes.values()
                  if isinstance(n.meta.get("val"), torch.Tensor)}
        named = {}  # each input symbol, as the recorded shapes hold it (with its assumptions) -> its range's name
        for v, axes in zip(values, dims.axes):
            for d, name in axes.items():
                expr = _recorded(v.shape[d]) if isinstance(v, torch.Tensor) else None
                if getattr(expr, "is_Symbol", False):
                    named[expr] = sympy.Symbol(name)
        texts = {n.name: _text(n.meta.get("val"), named) for n in nodes.values()}
        return cls(dims, guard, symbols, shapes, texts)

    def spec_text(self, node: str) -> str | None:
        """Node ``node``'s value as recorded at capture -- dtype and shape, of each tensor of a tuple -- each symbol
        written as its range's name (``float32[batch, seq, 64]``): the same in every process that captures the same
        model with the same ranges, whatever its symbols are numbered there."""
        return self.texts.get(node)

    def shape_at(self, node: str, sizes: dict[str, int]) -> tuple[int, ...] | None:
        """Node ``node``'s shape when each range has the size ``sizes`` gives it (``{"batch": 4, "seq": 100}``)."""
        shape = self.shapes.get(node)
        if shape is None:
            return None
        by_symbol = {sym: sizes[name] for sym, name in self.symbols.items() if name in sizes}
        out = []
        for x in shape:
            if isinstance(x, int):
                out.append(x)
                continue
            free = {str(f): f for f in x.free_symbols}
            if not set(free) <= set(by_symbol):
                return None
            out.append(int(x.subs({f: by_symbol[name] for name, f in free.items()})))
        return tuple(out)


# -- size-only values --------------------------------------------------------------------------------------------------

SIZE_ONLY_BUDGET = 256  # nodes: a mask's construction (aranges, comparisons, expands); past it nothing is proved


def _is_pure_call(n: fx.Node) -> bool:
    t = n.target
    if n.op != "call_function":
        return False
    if isinstance(t, torch._ops.OpOverload):
        return not t._schema.is_mutable and torch.Tag.nondeterministic_seeded not in t.tags
    return getattr(t, "__module__", None) in ("_operator", "operator")


def size_only_value(gm: fx.GraphModule, node: Any, symbolic: SymbolicGraph, sizes: dict[str, int],
                    constants: dict[str, torch.Tensor], budget: int = SIZE_ONLY_BUDGET) -> Any:
    """The value of ``node`` when each range has the size ``sizes`` gives it, where it depends only on constants
    (``get_attr``, placeholders in ``constants``), literals and tensors' *sizes* (``sym_size``); None when it reads an
    input's values, an impure op, or more than ``budget`` nodes."""
    def leaf(n: fx.Node) -> Any:
        if n.op == "get_attr":
            obj = attribute(gm, str(n.target))
            return obj.detach() if isinstance(obj, torch.Tensor) else obj
        if n.op == "placeholder":
            return constants[n.name].detach() if n.name in constants else UNKNOWN
        if n.op == "call_function" and n.target is torch.ops.aten.sym_size.int and isinstance(n.args[0], fx.Node):
            shape = symbolic.shape_at(n.args[0].name, sizes)
            return UNKNOWN if shape is None else shape[n.args[1]]
        return COMPUTE

    if not isinstance(node, fx.Node):
        return node
    value = evaluate_ahead(node, leaf, budget, pure=_is_pure_call)
    return None if value is UNKNOWN else value
