"""Sibling GEMMs and gated MLPs on real transformers models (tiny configs, random weights, nothing downloaded):
q/k/v become one site and gate/up another in every layer, and the merged rewrite keeps the model's output.

Skipped when transformers is not installed.  The rewrite is applied to the runnable captured graph directly
(``rewrite_group``), not through ``apply``, whose final ``lean`` pass is another module's business.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys

import pytest
import torch

from fxfusion.fusions.match import find_sites
from fxfusion.graph.capture import capture
from fxfusion.graph.runnable import runnable_graph
from fxfusion.measure.correctness import relative_error
from fxfusion.planning.plan import FusionPlan
from fxfusion.planning.rewrite import rewrite_group
from fxfusion.profiles.profile import Decision

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
aten = torch.ops.aten


def _transformers():
    """transformers imports torchvision when it is installed; a CUDA torchvision wheel beside a CPU torch fails to
    import (its fake kernels for torchvision::nms/qnms are registered for ops its C++ extension never defined).
    Declaring those two schemas (no kernel) lets the pure-Python part import."""
    try:
        importlib.import_module("torchvision")
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        for op in ("nms", "qnms"):
            try:
                getattr(torch.ops.torchvision, op)
            except (AttributeError, RuntimeError):
                schema = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
                torch.library.define(f"torchvision::{op}", schema)
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
    except ImportError:
        pass
    return importlib.import_module("transformers")


class LastHiddenState(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):  # (B, T) -> (B, T, hidden)
        return self.model(input_ids=input_ids, use_cache=False, return_dict=True).last_hidden_state


def _tiny(config_name: str, model_name: str):
    tf = _transformers()
    torch.manual_seed(0)
    config = getattr(tf, config_name)(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                      max_position_embeddings=64, use_cache=False, attn_implementation="eager")
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(0))
    return LastHiddenState(getattr(tf, model_name)(config)).eval(), (ids,)


@pytest.mark.parametrize("config_name,model_name,qkv", [("LlamaConfig", "LlamaModel", "sibling_gemm3"),
                                                         ("Qwen2Config", "Qwen2Model", "sibling_gemm3_bias")])
def test_hf_qkv_and_gate_up_merge_and_keep_the_output(config_name, model_name, qkv):
    model, inputs = _tiny(config_name, model_name)
    captured = capture(model, inputs)
    sites = find_sites(captured)
    merged = [s for s in sites if s.pattern in (qkv, "gated_mlp_silu")]
    assert [s.pattern for s in merged] == [qkv, "gated_mlp_silu"] * 2  # per layer: q/k/v, then gate/up
    assert all(s.legal for s in merged)
    assert [s.shape for s in merged if s.pattern == qkv] == [{"M": 16, "K": 64, "N1": 64, "N2": 32, "N3": 32}] * 2
    assert not [s for s in sites if s.pattern.startswith("linear")]  # o_proj, down_proj: lone bias-free GEMMs
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
