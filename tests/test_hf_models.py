"""Sibling GEMMs and gated MLPs on real transformers models -- the zoo's Llama and Qwen2 (models/zoo/hf_llama.py,
hf_qwen2.py: tiny configs, random weights, nothing downloaded) with eager attention: q/k/v become one site and gate/up
another in every layer, and the merged rewrite keeps the model's output.

Skipped when transformers is not installed.  The rewrite is applied to the runnable captured graph (``rewrite_group``)
and that graph is run as it is, so the check is of these fusions alone, not of the rest of ``apply``.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from fxfusion.fusions.match import find_sites
from fxfusion.graph.capture import capture
from fxfusion.graph.runnable import runnable_graph
from fxfusion.measure.correctness import relative_error
from fxfusion.planning.plan import FusionPlan
from fxfusion.planning.rewrite import rewrite_group
from fxfusion.profiles.profile import Decision
from tests.zoo_entries import require, zoo_module

aten = torch.ops.aten


def _tiny(zoo_file: str):
    """The zoo model's tiny preset (2 layers, hidden 64, intermediate 128, 4 heads / 2 kv heads, 2 x 16 tokens) with
    eager attention, the code path Hugging Face writes out op by op."""
    require("transformers")
    module = zoo_module(zoo_file)
    cfg = dataclasses.replace(module.PRESETS["tiny"], attn_implementation="eager")
    return module.get_model(cfg), module.get_inputs(cfg)


@pytest.mark.parametrize("zoo_file,qkv", [("hf_llama", "sibling_gemm3"), ("hf_qwen2", "sibling_gemm3_bias")])
def test_hf_qkv_and_gate_up_merge_and_keep_the_output(zoo_file, qkv):
    model, inputs = _tiny(zoo_file)
    captured = capture(model, inputs)
    sites = find_sites(captured)
    merged = [s for s in sites if s.pattern in (qkv, "gated_mlp_silu")]
    assert [s.pattern for s in merged] == [qkv, "gated_mlp_silu"] * 2  # per layer: q/k/v, then gate/up
    assert all(s.legal for s in merged)
    assert [s.shape for s in merged if s.pattern == qkv] == [{"M": 32, "K": 64, "N1": 64, "N2": 32, "N3": 32}] * 2
    # o_proj and down_proj each join the residual add and RMSNorm after them, except the last down_proj (its sum is
    # read by the final norm alone: an rmsnorm site, the GEMM and the add left as they are)
    assert [s.roles["proj_weight_param"].split(".", 2)[-1] for s in sites if s.pattern.startswith("linear")] == [
        "0.self_attn.o_proj.weight", "0.mlp.down_proj.weight", "1.self_attn.o_proj.weight"]
    decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", "merged", None, "test")
                 for s in merged}
    plan = FusionPlan.from_decisions(captured, sites, decisions)
    gm = runnable_graph(captured, 0, model)
    gemms_before = sum(n.target == aten.linear.default for n in gm.graph.nodes)
    assert [rewrite_group(gm, g).applied for g in plan.groups] == [True] * 4
    gm.graph.lint()
    gemms = [n for n in gm.graph.nodes if n.target in (aten.linear.default, aten.mm.default, aten.addmm.default)]
    assert (gemms_before, len(gemms)) == (14, 8)  # 7 per layer -> q/k/v, o, gate/up, down
    with torch.no_grad():
        got, want = gm(*inputs), copy.deepcopy(model).double()(*inputs)
    assert relative_error(got, want) < 1e-4
