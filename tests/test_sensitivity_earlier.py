"""Where the output does not depend on the input (a zero-initialised head), verification moves to an earlier tensor
that does (issue 26, item 2): the report says which tensor was compared, a wrong rewrite before the head fails there,
and the perturbed-weight control is still made (on the output, and on the earlier tensor)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import fx

from fxfusion.graph.loader import load_model
from fxfusion.planning.candidates import CandidateSet
from fxfusion.planning.sensitivity import _in_planned
from fxfusion.planning.verify import verify_plan
from tests.helpers import TINY_SPEC, replace_rewrite, ten_percent_off
from tests.test_gate import first_variant_plan

VACUOUS = Path(__file__).resolve().parent / "models_vacuous.py"  # up -> GELU -> zero head (bias 0.5)
FLOAT32_TOL = 1e-4  # float32 against float64, as fxfusion.measure.correctness sets it


def _verify(spec=VACUOUS):
    loaded = load_model(spec)
    plan = first_variant_plan(loaded.model, loaded.example_inputs)
    return plan, verify_plan(loaded.model, loaded.example_inputs, plan, spec=TINY_SPEC,
                             candidates=CandidateSet.uncompiled(captured=False))


def _moved(warnings):
    return [w for w in warnings if "the check moved to the last tensor before it" in w]


def test_zero_head_is_checked_at_the_tensor_the_head_reads():
    plan, r = _verify()
    assert [g.pattern for g in plan.groups] == ["linear_bias_gelu"]  # up-projection + bias + GELU, before the head
    assert r.ok, r.reason
    [check] = r.outputs
    assert check.input_moves == 0.0 and check.weight_error_moves == 0.0  # the output itself: the vacuous case
    e = check.earlier
    # the GELU the head reads (the addmm rewrite replaced the matmul and the add before it, and kept the GELU)
    assert e["node"] == "gelu" and e["op"] == "aten.gelu.default" and e["planned_node"] == "gelu"
    assert e["shape"] == [8, 256] and e["ok"] and e["error"] < FLOAT32_TOL
    assert e["input_moves"] > FLOAT32_TOL and e["weight_error_moves"] > FLOAT32_TOL  # both controls see it move
    [said] = _moved(r.warnings)
    assert said.startswith("output 0 does not depend on the inputs") and "gelu (aten.gelu.default, (8, 256)" in said
    assert "within its 1.0e-04 limit" in said and ", perturbed weights by " in said
    assert r.to_dict()["outputs"][0]["earlier"]["node"] == "gelu"  # in the report's JSON too


def test_a_wrong_rewrite_before_a_zero_head_fails_at_the_earlier_tensor(monkeypatch):
    """Before: the output is the head's bias whatever the up-projection computes, so this rewrite verified."""
    _, plan_ok = _verify()
    variant = plan_ok.rewrites[0]["variant"]
    replace_rewrite(monkeypatch, variant, ten_percent_off)
    _, r = _verify()
    assert any(d["applied"] for d in r.rewrites)
    assert r.outputs[0].error < FLOAT32_TOL  # the output itself cannot see it
    assert not r.ok and "the tensor checked in its place, gelu" in r.reason
    assert r.outputs[0].earlier["error"] > 0.05 and not r.outputs[0].earlier["ok"]
    assert "OVER its 1.0e-04 limit" in _moved(r.warnings)[0]


def test_an_output_that_depends_on_the_input_is_checked_itself():
    loaded = load_model(VACUOUS)
    model = type(loaded.model)().eval()  # the same MLP with its head as initialised
    plan = first_variant_plan(model, loaded.example_inputs)
    r = verify_plan(model, loaded.example_inputs, plan, spec=TINY_SPEC,
                    candidates=CandidateSet.uncompiled(captured=False))
    assert r.ok and r.outputs[0].earlier is None and _moved(r.warnings) == []


def test_a_tensor_the_planned_graph_recomputed_is_found_through_the_node_that_reads_it():
    """A rewrite that replaced the tensor itself (a new node, another name): the head both graphs kept reads it."""
    def graph(act_name):
        g = fx.Graph()
        x, w = g.placeholder("x"), g.placeholder("w")
        act = g.call_function(torch.ops.aten.gelu.default, (x,), name=act_name)
        head = g.call_function(torch.ops.aten.linear.default, (act, w), name="linear")
        g.output((head,))
        return g, act

    _, act = graph("gelu")
    planned, twin = graph("fused_gelu")
    found, how = _in_planned(act, {n.name: n for n in planned.nodes})
    assert found is twin and "read by linear" in how and "fused_gelu" in how
    assert _in_planned(act, {"x": None}) is None  # neither it nor a node that reads it is in the planned graph


def test_the_float64_run_of_a_graph_moves_the_devices_it_names_to_the_cpu():
    """An exported graph keeps the device it was captured on in creation ops (arange(device=cuda:0)); the earlier
    tensor's float64 run is on the CPU.  Here 'meta' stands for the card: a meta arange cannot be added to a CPU
    tensor, so the run only succeeds when the device is moved."""
    from fxfusion.planning.sensitivity import _float64_values

    g = fx.Graph()
    x = g.placeholder("x")
    r = g.call_function(torch.ops.aten.arange.default, (4,), {"dtype": torch.float32, "device": torch.device("meta")})
    s = g.call_function(torch.ops.aten.add.Tensor, (x, r))
    g.output(s)
    gm = fx.GraphModule(torch.nn.Module(), g)
    value = _float64_values(gm, (torch.ones(4),), s.name)
    assert value.device.type == "cpu" and value.dtype == torch.float64
    assert torch.equal(value, torch.arange(4, dtype=torch.float64) + 1)
    assert r.kwargs["device"] == torch.device("meta")  # the caller's graph is left as it was
