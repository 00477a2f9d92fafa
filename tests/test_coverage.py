"""Coverage: the share of FLOPs and time inside the sites, and the unmatched ops ranked by time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fxfusion.fusions.match import find_sites
from fxfusion.graph.capture import capture
from fxfusion.graph.loader import load_model
from fxfusion.planning.coverage import _node_ms, coverage_line, measure_coverage
from tests.helpers import MODELS


def _coverage(name):
    loaded = load_model(MODELS / f"{name}.py")
    captured = capture(loaded.model, loaded.example_inputs)
    sites = find_sites(captured)
    return loaded, sites, measure_coverage(captured, sites, loaded.model, "cpu")


def test_flops_add_up_to_the_whole_model():
    loaded, sites, c = _coverage("mlp_block")
    with torch.no_grad(), FlopCounterMode(display=False) as whole:
        loaded.model(*loaded.example_inputs)
    assert c.flops_total == whole.get_total_flops() > 0
    # the GEMMs are all in sites: nearly every FLOP is covered, and never more than all of them
    assert 0.9 < c.flops_share <= 1.0
    assert 0.0 < c.time_share <= 1.0 and c.timed_on == "cpu"


def test_unmatched_ops_are_ranked_by_time_and_named():
    _, sites, c = _coverage("transformer_block")
    ops = [u["op"] for u in c.unmatched]
    assert "aten.layer_norm.default" in ops  # the LayerNorm whose add is read again is in no site
    times = [u["ms"] for u in c.unmatched]
    assert times == sorted(times, reverse=True)
    line = coverage_line(c.to_dict())
    assert line.startswith("Coverage: the sites hold") and "left on the table" in line


def test_sdpa_flops_are_counted_on_a_cpu():
    """FlopCounterMode counts 0 for SDPA on a CPU (issue 26): the SDPA nodes are counted by the formula
    2 B H Sq Sk D + 2 B H Sq Sk Dv, so an attention model's coverage is not 0%."""
    pytest.importorskip("transformers")
    loaded = load_model(MODELS / "zoo" / "hf_gpt2_sdpa.py")  # 2 layers, 2 heads of 32, 2 x 16 tokens
    captured = capture(loaded.model, loaded.example_inputs)
    sdpa = [n for g in captured.graphs for n in g.graph.nodes
            if n.target is torch.ops.aten.scaled_dot_product_attention.default]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(*(torch.randn(2, 2, 16, 32),) * 3)
    assert len(sdpa) == 2 and counter.get_total_flops() == 0  # what the counter alone sees
    sites = find_sites(captured)
    c = measure_coverage(captured, sites, loaded.model, "cpu")
    per_layer = 2 * (2 * 2) * 16 * 16 * 32 * 2  # Q K^T and P V, B=2 H=2 S=16 D=32
    with torch.no_grad(), FlopCounterMode(display=False) as whole:
        loaded.model(*loaded.example_inputs)
    assert c.flops_total == whole.get_total_flops() + 2 * per_layer
    assert any("SDPA formula" in n for n in c.notes)
    sdpa_sites = [s for s in sites if set(s.nodes) & {n.name for n in sdpa}]
    assert sdpa_sites and c.flops_in_sites >= 2 * per_layer


class _Range:
    def __init__(self, name, us):
        self.name, self.cpu_time_total = name, us


class _Profile:
    def __init__(self, events):
        self._events = events

    def events(self):
        return self._events


def test_a_node_time_is_its_median_pass_so_one_preempted_pass_does_not_dominate():
    """Under load one pass of a LayerNorm took 100x the others; the mean of the passes handed it a third of the
    model's time (CLIP, 2026-12-07).  The median over the passes is one ordinary pass."""
    passes = {"layer_norm": [10.0, 10.0, 1000.0, 10.0, 10.0], "addmm": [30.0, 31.0, 29.0, 30.0, 30.0]}
    prof = _Profile([_Range("fxnode::" + n, us) for n, times in passes.items() for us in times]
                    + [_Range("aten::mm", 5.0)])  # not a node's range: not counted
    assert _node_ms(prof, on_device=False) == {"layer_norm": 0.010, "addmm": 0.030}


def test_what_an_empty_range_costs_is_not_counted_as_the_models_time():
    """The profiler's own cost per range (several microseconds on this CPU) would weigh a view as much as a GEMM at a
    tiny preset's shapes: the median empty range is subtracted from every node, never below zero."""
    prof = _Profile([_Range("fxnode::<empty range>", us) for us in (4.0, 4.0, 5.0)]
                    + [_Range("fxnode::view", 3.0), _Range("fxnode::addmm", 34.0)])
    assert _node_ms(prof, on_device=False) == {"view": 0.0, "addmm": pytest.approx(0.030)}
