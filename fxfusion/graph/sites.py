"""The contract between capture/matching (analyze) and planning/applying: what a fusible site is.

A model is captured as one or more aten-level ``torch.fx.GraphModule`` s (:class:`CapturedModel`); the matcher
returns :class:`Site` s that name nodes of those graphs.  Sites never overlap; every node not in a site is counted
in ``CapturedModel.unmatched``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch


class SiteStatus(StrEnum):
    FUSIBLE = "fusible"
    ILLEGAL = "illegal"  # a legality rule refused it (reasons say which)
    ALREADY_FUSED = "already_fused"  # the model already runs it fused (SDPA, addmm with its activation, ...)


FUSIBLE, ILLEGAL, ALREADY_FUSED = SiteStatus.FUSIBLE, SiteStatus.ILLEGAL, SiteStatus.ALREADY_FUSED


class Flag(StrEnum):
    """Facts a matcher records about how a site is written, which a rewrite reads (``Site.flags``)."""

    # The activation is written out in elementwise ops (GPT-2's tanh GELU), recognised by value: the matcher names its
    # output node in ``roles["activation"]`` and its name in ``roles["act"]``.
    ACT_WRITTEN = "act_written"


@dataclass
class Site:
    id: str  # "g0.s3": graph index and site index, stable for one capture
    pattern: str  # a name in fxfusion.fusions.registry.REGISTRY (e.g. "linear_bias_gelu"), or "sdpa" when already fused
    graph_index: int  # index into CapturedModel.graphs
    nodes: list[str]  # names of the fx nodes of this site, in topological order
    shape: dict[str, int]  # the pattern's shape keys (see the pattern's shape_keys), at this site
    dtype: str  # "float32" | "bfloat16" | "float16" | "float64"
    status: SiteStatus = FUSIBLE
    reasons: list[str] = field(default_factory=list)  # why ILLEGAL (one sentence each)
    # Pattern-specific facts a rewrite needs, by role: e.g. {"weight": "p_fc1_weight", "bias": ..., "input": ...}
    # for linear; {"conv": node, "bn_weight": ..., "running_mean": ...} for conv+BN; module paths where known.
    roles: dict[str, str] = field(default_factory=dict)
    flags: frozenset[Flag] = frozenset()
    # The variant that runs like the user's code, which a decision is made against: "eager", except where the family
    # says the site already runs as one of its variants (a linear whose bias is in the GEMM runs like "addmm").
    baseline_variant: str = "eager"
    written_as: str = ""  # how the user wrote it, e.g. "nn.Linear", "x @ W.T + b", "F.linear"
    source: str = ""  # the module path / stack trace line, where the graph records one
    notes: list[str] = field(default_factory=list)  # what the match approximated or left out (one sentence each)

    @property
    def legal(self) -> bool:
        return self.status == FUSIBLE


@dataclass
class CapturedModel:
    method: str  # "export" | "dynamo"
    graphs: list[torch.fx.GraphModule]
    example_inputs: tuple[Any, ...]
    graph_breaks: list[str] = field(default_factory=list)  # one reason each, as dynamo reports them
    unmatched: dict[str, int] = field(default_factory=dict)  # op target -> count of nodes in no site
    notes: list[str] = field(default_factory=list)
    # Per graph: placeholder (or get_attr) node name -> the model's parameter/buffer name ("blocks.0.fc.weight").
    parameters: list[dict[str, str]] = field(default_factory=list)
    # Per graph: the torch.export ExportedProgram it came from (None for a graph kept at the torch level), and the
    # example inputs that program's module() takes (for "export": example_inputs; for "dynamo": the subgraph's
    # inputs as dynamo passed them, parameters included).
    programs: list[Any] = field(default_factory=list)
    graph_inputs: list[tuple[Any, ...]] = field(default_factory=list)
    # A dynamic capture's symbolic dimensions, ranges, guard and shapes (fxfusion.graph.symbolic.SymbolicGraph); None:
    # the graphs are specialised to example_inputs' shapes.
    dynamic: Any = None
