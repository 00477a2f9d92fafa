"""What a fusion family is made of: patterns (what is measured), matchers (where it is in a graph) and rewrites.

A family (``fxfusion.fusions.<family>``) declares a :class:`Family`: its patterns and its matchers; each of its
patterns' manual variants carries the rewrite that puts that variant into a graph (bound by object, not by name).
:mod:`fxfusion.fusions.registry` collects the families.

A pattern is a small declarative object: what it computes, what it costs, and how it can be fused.

Each pattern declares
  * ``make_inputs(shape, dtype, device, gen)``: the tensors of one problem (parameters included);
  * ``eager(**inputs)``: the separate ops as users write them (also the float64 reference, run in float64); a
    tensor, or a tuple of tensors for a pattern with several outputs (sibling GEMMs);
  * ``manual``: a real hand fusion, built once from the inputs (BatchNorm folding happens at build time, as it
    would at model-load time) and returning a zero-argument callable;
  * ``flops(shape)`` and ``bytes(shape, itemsize, fused)``: the analytic cost model; every op reads its inputs and
    writes its output (parameters included) when unfused, and intermediates never reach memory when fused.

The ``compile`` variants (torch.compile of ``eager``) are generic and live in :mod:`fxfusion.calibration.variants`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections import Counter
from typing import Callable, Mapping

import torch
from torch.fx import Node

from fxfusion.errors import FxFusionError
from fxfusion.graph.capture import module_path
from fxfusion.graph.sites import FUSIBLE, Flag, SiteStatus

Shape = Mapping[str, int]
Inputs = dict[str, torch.Tensor]
Thunk = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class ManualVariant:
    """A hand fusion. ``build(inputs)`` returns the timed zero-argument callable; ``note`` says what it fuses;
    ``rewrite(gm, nodes, group)`` puts this variant into a captured graph (see :mod:`fxfusion.graph.edit` for the
    contract), or None when the variant is measured only."""

    name: str
    build: Callable[[Inputs], Thunk]
    note: str
    rewrite: Callable | None = None
    # Returns a reason string when the variant cannot run for this problem (e.g. device), else None.
    unsupported: Callable[[Shape, torch.dtype, str], str | None] = lambda shape, dtype, device: None


@dataclass(frozen=True)
class Pattern:
    name: str  # registry key, e.g. "linear_bias_relu"
    family: str  # "linear" | "conv" | "attention" | "norm"
    title: str  # human name, e.g. "Linear+Bias+ReLU"
    legacy_name: str  # the original suite's name, e.g. "Linear_Bias_ReLU"
    shape_keys: tuple[str, ...]
    make_inputs: Callable[[Shape, torch.dtype, str, torch.Generator], Inputs]
    eager: Callable[..., torch.Tensor]
    manual: tuple[ManualVariant, ...]
    flops: Callable[[Shape], int]
    bytes: Callable[[Shape, int, bool], int]
    shapes: Mapping[str, tuple[Shape, ...]]  # size set name ("quick", "full", "gpu") -> shapes
    extra: Callable[[Shape], dict] = field(default=lambda shape: {})
    # Inputs whose first dimension is the first shape key (rows, batch); the output's first dimension is too.  The
    # float64 reference of a large problem is computed on a slice of these rows (rows are independent).
    batch_inputs: tuple[str, ...] = ("x",)
    # Bytes a site moves when it already runs as one of the pattern's variants (Site.baseline_variant: a linear whose
    # bias is in the GEMM runs as addmm), by variant name; a baseline not named here moves eager's, ``bytes(.., False)``.
    baseline_bytes: Mapping[str, Callable[[Shape, int], int]] = field(default_factory=dict)

    def bytes_as(self, shape: Shape, itemsize: int, baseline: str) -> int:
        """Bytes moved per call by the site as it runs now, as ``baseline``."""
        own = self.baseline_bytes.get(baseline)
        return own(shape, itemsize) if own is not None else self.bytes(shape, itemsize, False)

    def check_shape(self, shape: Shape) -> dict[str, int]:
        missing = [k for k in self.shape_keys if k not in shape]
        unknown = [k for k in shape if k not in self.shape_keys]
        if missing or unknown:
            raise FxFusionError(
                f"pattern {self.name} takes shape keys {','.join(self.shape_keys)}; "
                f"got {','.join(shape) or 'none'}"
            )
        return {k: int(shape[k]) for k in self.shape_keys}

    def reference_slice(self, shape: Shape, inputs: dict, max_bytes: int) -> tuple[dict, int]:
        """Inputs cut to the leading rows whose float64 unfused working set fits in ``max_bytes``, and the row count."""
        key = self.shape_keys[0]
        rows = shape[key]
        while rows > 1 and self.bytes({**shape, key: rows}, 8, False) > max_bytes:
            rows = (rows + 1) // 2
        if rows == shape[key]:
            return inputs, rows
        return {k: (v[:rows] if k in self.batch_inputs else v) for k, v in inputs.items()}, rows

    def variant(self, name: str) -> ManualVariant | None:
        return next((mv for mv in self.manual if mv.name == name), None)

    def memory_reduction(self, shape: Shape, itemsize: int) -> float:
        unfused = self.bytes(shape, itemsize, False)
        return 1.0 - self.bytes(shape, itemsize, True) / unfused if unfused else 0.0


def randn(gen: torch.Generator, *size: int, dtype: torch.dtype, device: str, scale: float = 1.0) -> torch.Tensor:
    """Random normal data made on the CPU from a seeded generator (so every device sees the same numbers)."""
    t = torch.randn(*size, generator=gen, dtype=torch.float32) * scale
    return t.to(device=device, dtype=dtype)


def shapes(*rows: dict[str, int]) -> tuple[dict[str, int], ...]:
    return tuple(rows)


# -- what matchers produce -------------------------------------------------------------------------------------------

@dataclass
class Graph:
    """One captured graph with the indexes the matchers share."""

    index: int
    gm: torch.fx.GraphModule
    parameters: dict[str, str]  # placeholder/get_attr name -> the model's parameter or buffer name
    order: dict[Node, int] = field(default_factory=dict)
    by_kind: dict[str, list[Node]] = field(default_factory=dict)

    def param(self, node) -> str | None:
        """The parameter/buffer name behind ``node`` (a placeholder or get_attr), else None."""
        if not isinstance(node, Node):
            return None
        if node.op == "get_attr":
            return self.parameters.get(node.name, str(node.target))
        return self.parameters.get(node.name) if node.op == "placeholder" else None


@dataclass
class Candidate:
    """A matcher's proposal: the nodes of a site (graph order is restored later) and what a rewrite needs."""

    pattern: str
    nodes: list[Node]
    output: Node
    shape: dict[str, int]
    dtype: str
    roles: dict[str, str]
    written_as: str
    status: SiteStatus = FUSIBLE
    flags: frozenset[Flag] = frozenset()  # how it is written, for the rewrite (graph.sites.Flag)
    baseline_variant: str = "eager"  # the variant that runs like the user's code (graph.sites.Site)
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    boundary: list[Node] = field(default_factory=list)  # inputs and parameters whose dtype must match the output
    anchor: Node | None = None
    # Nodes besides ``output`` whose values every fused variant of the pattern also writes out (a pre-LN residual
    # sum that the next residual add reads again; each sibling GEMM's output, recreated as a slice of the merged
    # one): nodes outside the site may read them.
    outputs: list[Node] = field(default_factory=list)


@dataclass
class Context:
    graph: Graph
    weight_uses: Counter  # conv weight key -> number of conv nodes (over all graphs) that read it
    weight_users: dict  # conv weight key -> names of those conv nodes, "g<i>:<node>"
    # Nodes already in a site of this graph (filled by the driver as sites are found): a matcher that groups several
    # anchors (sibling GEMMs) leaves out the ones an earlier site took, instead of proposing an overlap.
    claimed: set = field(default_factory=set)


def weight_key(g: Graph, weight) -> str:
    name = g.param(weight)
    return f"param:{name}" if name else f"g{g.index}:{getattr(weight, 'name', weight)}"


def add_role(roles: dict[str, str], key: str, node) -> None:
    if isinstance(node, Node):
        roles[key] = node.name


def described(node: Node, fallback: str) -> str:
    path, cls = module_path(node)
    return f"nn.{cls}" if cls and path else fallback


@dataclass(frozen=True)
class Matcher:
    anchors: tuple[str, ...]  # op kinds a match starts from
    match: Callable[[Context, Node], Candidate | None]
    legality: str  # when a match is legal, one line (written next to the rule, shown in docs/architecture.md)
    family: str = ""  # set by the family


@dataclass(frozen=True)
class Family:
    """One fusion family: its patterns and its matchers, in the order they run (a larger pattern first)."""

    name: str
    patterns: tuple[Pattern, ...]
    matchers: tuple[Matcher, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "matchers", tuple(Matcher(m.anchors, m.match, m.legality, self.name)
                                                   for m in self.matchers))
