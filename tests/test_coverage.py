"""Coverage: the share of FLOPs and time inside the sites, and the unmatched ops ranked by time."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from fxfusion.fusions.match import find_sites
from fxfusion.graph.capture import capture
from fxfusion.graph.loader import load_model
from fxfusion.planning.coverage import coverage_line, measure_coverage
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
