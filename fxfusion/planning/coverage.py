"""Coverage: how much of a model the matched sites hold, so a user sees what the tool leaves on the table.

Method (:func:`measure_coverage`), on the captured graphs as they run (:func:`fxfusion.graph.runnable.runnable_graph`,
whose compute nodes keep the captured names):
  1. FLOPs per node: each ``call_function`` node is run once under ``torch.utils.flop_counter.FlopCounterMode``
     (its registry of aten FLOP formulas; an op it has no formula for counts 0 -- reported, not guessed), except the
     ops of :data:`FLOP_FORMULAS` where it counts 0: SDPA on a CPU dispatches to a kernel the counter has no formula
     for, so an attention model would read 0% covered; those nodes are counted by the formula here, and a note says
     how many;
  2. time per node: ``PROFILED_PASSES`` forward passes of the graph under ``torch.profiler``, each node's call
     inside a ``record_function`` range named after it (the interpreter fetches its arguments outside the range);
     a node's time is the median over the passes of its range's device time on CUDA (the kernels it launched), its
     CPU time elsewhere -- the median, so that one pass preempted on a loaded host does not hand a third of the
     model's time to one LayerNorm (seen with a mean of 3 passes under load, 2026-12-07: CLIP's share 13% in one
     run and 75% in the next).  On the CPU the median time of an empty range (``EMPTY_RANGES`` per pass) is
     subtracted from each node's: the profiler's own cost per range, several microseconds, is not the model's, and
     at a tiny preset's shapes it would otherwise weigh a view as much as a GEMM;
  3. the share of FLOPs and of time inside a site, and the nodes in no site grouped by aten op, ranked by time.
Cost: one pass for FLOPs and ``PROFILED_PASSES`` passes under the profiler, per graph.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import fx
from torch.profiler import record_function
from torch.utils.flop_counter import FlopCounterMode

from fxfusion.graph.runnable import runnable_graph
from fxfusion.graph.sites import CapturedModel, Site
from fxfusion.measure.devices import is_cuda, synchronize
from fxfusion.measure.profiling import profiled

PROFILED_PASSES = 5  # odd: the median is one pass's time


def _sdpa_flops(args: tuple, kwargs: dict) -> int:
    """Q K^T and P V: 2 B H Sq Sk D + 2 B H Sq Sk Dv (query (..., Sq, D), key (..., Sk, D), value (..., Sk, Dv);
    the softmax and scale are not counted, as FlopCounterMode counts none for its fused kernels either)."""
    q, k, v = (kwargs.get(n, a) for n, a in zip(("query", "key", "value"), args[:3]))
    batch_heads = q.numel() // (q.shape[-2] * q.shape[-1]) if q.numel() else 0
    sq, d, sk, dv = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    return 2 * batch_heads * sq * sk * d + 2 * batch_heads * sq * sk * dv


# Ops whose FLOPs FlopCounterMode may miss (counts 0) on some device, each with its formula.
FLOP_FORMULAS = {
    torch.ops.aten.scaled_dot_product_attention.default: _sdpa_flops,  # CPU: the flash-for-CPU kernel has no formula
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default: _sdpa_flops,
}
_TAG = "fxnode::"
_EMPTY = "<empty range>"  # not a node name: fx names are identifiers
EMPTY_RANGES = 20  # empty ranges per profiled pass, whose median time is the instrumentation's cost per node
TOP_UNMATCHED = 12  # unmatched op kinds listed (the rest are summed in the totals)


@dataclass
class Coverage:
    flops_total: int
    flops_in_sites: int
    time_total_ms: float  # per forward pass, summed over the nodes' ranges
    time_in_sites_ms: float
    timed_on: str  # "device" (CUDA kernels) | "cpu"
    unmatched: list[dict[str, Any]] = field(default_factory=list)  # {op, count, ms, time_share, flops}
    notes: list[str] = field(default_factory=list)

    @property
    def flops_share(self) -> float | None:
        return self.flops_in_sites / self.flops_total if self.flops_total else None

    @property
    def time_share(self) -> float | None:
        return self.time_in_sites_ms / self.time_total_ms if self.time_total_ms > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flops_share": self.flops_share, "time_share": self.time_share}


class _PerNode(fx.Interpreter):
    """Runs a graph node by node: counting each compute node's FLOPs, or naming its profiler range."""

    def __init__(self, gm: fx.GraphModule, count_flops: bool) -> None:
        super().__init__(gm)
        self.count_flops, self.flops, self.by_formula = count_flops, {}, 0

    def run_node(self, n: fx.Node) -> Any:
        if n.op != "call_function":
            return super().run_node(n)
        if self.count_flops:
            with FlopCounterMode(display=False) as counter:
                out = super().run_node(n)
            self.flops[n.name] = int(counter.get_total_flops())
            if not self.flops[n.name] and n.target in FLOP_FORMULAS:
                args, kwargs = self.fetch_args_kwargs_from_env(n)
                self.flops[n.name] = int(FLOP_FORMULAS[n.target](args, kwargs))
                self.by_formula += 1
            return out
        args, kwargs = self.fetch_args_kwargs_from_env(n)  # the interpreter's own work, outside the range
        with record_function(_TAG + n.name):
            return self.call_function(n.target, args, kwargs)

    def run(self, *args, **kwargs) -> Any:
        if not self.count_flops:
            for _ in range(EMPTY_RANGES):  # what a range costs with nothing inside: subtracted from every node's
                with record_function(_TAG + _EMPTY):
                    pass
        return super().run(*args, **kwargs)


def _range_ms(event, on_device: bool) -> float:
    """One range's time in ms (the profiler's times are in microseconds)."""
    if on_device:
        total = getattr(event, "device_time_total", None)
        total = getattr(event, "cuda_time_total", 0.0) if total is None else total
    else:
        total = event.cpu_time_total
    return float(total) / 1e3


def _node_ms(prof, on_device: bool) -> dict[str, float]:
    """Node name -> the median over the profiled passes of its range's time (ms per pass), less the median time of
    an empty range on the CPU (what the instrumentation itself costs; floored at 0)."""
    per_node: dict[str, list[float]] = defaultdict(list)
    for e in prof.events():
        if e.name.startswith(_TAG):
            per_node[e.name[len(_TAG):]].append(_range_ms(e, on_device))
    empty = per_node.pop(_EMPTY, None)
    floor = statistics.median(empty) if empty and not on_device else 0.0
    return {name: max(0.0, statistics.median(ms) - floor) for name, ms in per_node.items()}


def _op_name(n: fx.Node) -> str:
    return str(n.target)


def measure_coverage(captured: CapturedModel, sites: list[Site], model: torch.nn.Module | None,
                     device) -> Coverage:
    on_device = is_cuda(device)
    in_site = {(s.graph_index, name) for s in sites for name in s.nodes}
    flops_total = flops_in = 0
    time_total = time_in = 0.0
    by_op: dict[str, dict[str, float]] = defaultdict(lambda: {"count": 0, "ms": 0.0, "flops": 0})
    notes = []
    for gi in range(len(captured.graphs)):
        gm = runnable_graph(captured, gi, model)
        inputs = captured.graph_inputs[gi] if gi < len(captured.graph_inputs) else captured.example_inputs
        if gm is None:
            notes.append(f"graph {gi} could not be run on its own: not counted")
            continue
        nodes = {n.name: n for n in gm.graph.nodes if n.op == "call_function"}
        with torch.no_grad():
            counting = _PerNode(gm, count_flops=True)
            counting.run(*inputs)
            timing = _PerNode(gm, count_flops=False)
            timing.run(*inputs)  # warm
            synchronize(device)
            with profiled(on_device) as prof:
                for _ in range(PROFILED_PASSES):
                    timing.run(*inputs)
                synchronize(device)
        if counting.by_formula:
            notes.append(f"graph {gi}: {counting.by_formula} attention node(s) counted by fxfusion's SDPA formula "
                         "(FlopCounterMode counts none for them here)")
        times = _node_ms(prof, on_device)
        for name, n in nodes.items():
            f, ms = counting.flops.get(name, 0), times.get(name, 0.0)
            flops_total, time_total = flops_total + f, time_total + ms
            if (gi, name) in in_site:
                flops_in, time_in = flops_in + f, time_in + ms
            else:
                row = by_op[_op_name(n)]
                row["count"] += 1
                row["ms"] += ms
                row["flops"] += f
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1]["ms"])
    unmatched = [{"op": op, "count": int(r["count"]), "ms": r["ms"], "flops": int(r["flops"]),
                  "time_share": r["ms"] / time_total if time_total > 0 else None} for op, r in ranked[:TOP_UNMATCHED]]
    return Coverage(flops_total, flops_in, time_total, time_in, "device" if on_device else "cpu", unmatched, notes)


def coverage_line(c: dict[str, Any]) -> str:
    """One sentence for the terminal and markdown: the shares, and the largest unmatched ops by time."""
    def pct(x):
        return "-" if x is None else f"{x:.0%}"

    left = ", ".join(f"{u['op'].replace('aten.', '')} x{u['count']} {pct(u['time_share'])}"
                     for u in c.get("unmatched", [])[:5])
    return (f"Coverage: the sites hold {pct(c.get('flops_share'))} of the model's FLOPs and {pct(c.get('time_share'))} "
            f"of its {c.get('timed_on')} time (per-op profile)"
            + (f"; left on the table, by time: {left}" if left else ""))
