"""Capture at the aten level: torch.export when the model is one graph, Dynamo's subgraphs and breaks otherwise."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fxfusion.graph.capture import capture, module_path
from fxfusion.errors import FxFusionError
from fxfusion.graph.loader import load_model
from fxfusion.fusions.match import find_sites

MODELS = Path(__file__).resolve().parent.parent / "models"


def compute_nodes(captured):
    return [n for gm in captured.graphs for n in gm.graph.nodes if n.op == "call_function"]


def assert_every_node_has_shape_and_dtype(captured):
    for n in compute_nodes(captured):
        v = n.meta.get("val")
        values = v if isinstance(v, (tuple, list)) else [v]
        tensors = [t for t in values if isinstance(t, torch.Tensor)]
        if n.target is torch.ops.aten._assert_tensor_metadata.default:
            continue  # returns nothing
        assert tensors, f"{n.name} ({n.target}) has no tensor value"
        for t in tensors:
            assert isinstance(t.dtype, torch.dtype) and all(isinstance(int(d), int) for d in t.shape)


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        if h.sum() > 0:  # data-dependent
            h = F.gelu(self.fc2(h))
        return h


class ThroughNumpy(nn.Module):
    """Python that export cannot trace (a tensor leaves torch for numpy); Dynamo breaks the graph around it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        scale = float(np.abs(h.detach().numpy()).max()) + 1.0
        return F.silu(self.fc2(h / scale))


def test_export_gives_one_aten_graph_with_parameter_names():
    loaded = load_model(MODELS / "transformer_block.py")
    captured = capture(loaded.model, loaded.example_inputs)
    assert captured.method == "export" and len(captured.graphs) == 1 and captured.graph_breaks == []
    targets = {str(n.target) for n in compute_nodes(captured)}
    assert {"aten.linear.default", "aten.matmul.default", "aten.softmax.int", "aten.layer_norm.default"} <= targets
    assert captured.parameters[0]["p_attn_qkv_weight"] == "attn.qkv.weight"
    assert captured.parameters[0]["b_attn_mask"] == "attn.mask"
    assert captured.programs[0] is not None and captured.graph_inputs[0] == captured.example_inputs
    assert_every_node_has_shape_and_dtype(captured)


def test_data_dependent_control_flow_falls_back_to_dynamo_and_reports_the_break():
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    model = Gated().eval()
    torch.nn.init.constant_(model.fc1.bias, 1.0)  # h.sum() > 0: the gelu branch runs
    captured = capture(model, (x,))
    assert captured.method == "dynamo" and len(captured.graphs) == 2
    assert len(captured.graph_breaks) == 1
    assert captured.graph_breaks[0].startswith("data-dependent control flow") and "test_capture.py:" in \
        captured.graph_breaks[0]
    assert "torch.export could not capture one graph" in captured.notes[0]
    assert captured.parameters[0] == {"l_self_modules_fc1_parameters_weight_": "fc1.weight",
                                      "l_self_modules_fc1_parameters_bias_": "fc1.bias"}
    assert [n.name for n in compute_nodes(captured)][:2] == ["linear", "relu"]
    assert_every_node_has_shape_and_dtype(captured)
    sites = find_sites(captured)
    assert [(s.id, s.pattern, s.roles.get("weight_param")) for s in sites] == [
        ("g0.s0", "linear_bias_relu", "fc1.weight"), ("g1.s0", "linear_bias_gelu", "fc2.weight")]


def test_unsupported_python_falls_back_to_dynamo_with_its_break():
    captured = capture(ThroughNumpy().eval(), (torch.randn(2, 8),))
    assert captured.method == "dynamo" and len(captured.graphs) == 2
    assert captured.graph_breaks == [captured.graph_breaks[0]] and "test_capture.py:" in captured.graph_breaks[0]
    assert ".numpy() is not supported" in captured.notes[0]
    assert [(s.id, s.pattern) for s in find_sites(captured)] == [("g0.s0", "linear_bias_relu"),
                                                                 ("g1.s0", "linear_bias_silu")]


def test_export_failure_prints_nothing_and_can_be_an_error(capsys):
    with pytest.raises(FxFusionError) as err:
        capture(Gated().eval(), (torch.randn(4, 8),), allow_dynamo=False)
    message = str(err.value)
    assert message.startswith("torch.export could not capture the model: ") and "\n" not in message
    out = capsys.readouterr()
    assert "def forward" not in out.err and "def forward" not in out.out


def test_module_paths_are_normalised_for_export_and_dynamo():
    x = torch.randn(4, 8)
    model = Gated().eval()
    torch.nn.init.constant_(model.fc1.bias, 1.0)
    exported = capture(nn.Sequential(model.fc1, nn.ReLU()), (x,))
    dynamo = capture(model, (x,))
    assert (exported.method, dynamo.method) == ("export", "dynamo")
    for captured, path in ((exported, "0"), (dynamo, "fc1")):
        linear = next(n for n in compute_nodes(captured) if n.target is torch.ops.aten.linear.default)
        assert module_path(linear) == (path, "Linear")


def test_single_tensor_input_is_accepted():
    captured = capture(nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval(), torch.randn(2, 4))
    assert captured.method == "export" and len(captured.example_inputs) == 1


def _graph_facts(gm):
    return [(n.name, n.op, str(n.target), repr(n.args), repr(n.kwargs), n.meta.get("stack_trace"),
             repr(n.meta.get("nn_module_stack")), repr(n.meta.get("val"))) for n in gm.graph.nodes]


def test_lean_tracing_captures_what_plain_export_does_and_restores_the_collector():
    loaded = load_model(MODELS / "transformer_block.py")
    with torch.no_grad():
        plain = torch.export.export(loaded.model, loaded.example_inputs, strict=False)
    captured = capture(loaded.model, loaded.example_inputs)
    lean = captured.programs[0]
    assert _graph_facts(lean.graph_module) == _graph_facts(plain.graph_module)
    assert lean.graph_module.code == plain.graph_module.code
    assert str(lean.graph_signature) == str(plain.graph_signature)
    assert all(n.meta.get("stack_trace") for n in compute_nodes(captured))  # Site.source is read from them
    assert torch.equal(lean.module()(*loaded.example_inputs), plain.module()(*loaded.example_inputs))
    assert gc.isenabled()


def test_the_collector_is_restored_when_export_fails():
    captured = capture(Gated().eval(), (torch.randn(4, 8),))  # export fails, Dynamo captures, subgraphs export
    assert captured.method == "dynamo" and gc.isenabled()
    gc.disable()
    try:
        capture(nn.Sequential(nn.Linear(4, 4)).eval(), torch.randn(2, 4))
        assert not gc.isenabled()  # a caller's own setting is kept
    finally:
        gc.enable()
