"""Lean calls: a captured graph called through the public bindings gives the very same outputs, for less."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from fxfusion.graph.capture import capture
from fxfusion.graph.lean import binding_for, lean, original_target
from fxfusion.graph.loader import load_model
from fxfusion.planning.rewrite import captured_module
from tests.helpers import EXPECTED, MODELS

aten = torch.ops.aten


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_lean_graph_is_bitwise_the_captured_one(name):
    loaded = load_model(MODELS / f"{name}.py")
    captured = capture(loaded.model, loaded.example_inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = captured_module(loaded.model, captured)  # leaned by apply's own path
    with torch.no_grad():
        want = loaded.model(*loaded.example_inputs)
        got = graph(*loaded.example_inputs)
    want, got = torch.utils._pytree.tree_leaves(want), torch.utils._pytree.tree_leaves(got)
    assert len(want) == len(got) and all(torch.equal(a, b) for a, b in zip(want, got))
    if captured.method == "export":
        nodes = [n for n in graph.graph.nodes if n.op in ("call_function", "call_method")]
        # every aten call with a C binding went through it; what is left has none
        left = [n.target for n in nodes if isinstance(n.target, torch._ops.OpOverload)]
        assert all(binding_for(t) is None for t in left), left
        assert any(n.op == "call_method" for n in nodes) or name not in ("transformer_block",)
        # no constant read that nothing uses (BatchNorm's num_batches_tracked)
        assert not [n for n in graph.graph.nodes if n.op == "get_attr" and not n.users]
        assert "tree_flatten" not in graph.code


def test_bindings_are_builtins_of_the_same_op():
    assert binding_for(aten.relu.default) == ("call_function", torch.relu)
    assert binding_for(aten.linear.default) == ("call_function", torch._C._nn.linear)
    assert binding_for(aten.view.default) == ("call_method", "view")
    assert binding_for(aten.split.Tensor) is None  # torch.split is a Python wrapper (torch.functional)
    assert binding_for(aten.slice.Tensor) is None  # no public binding: the aten call stays
    assert binding_for(torch.relu) is None  # not an aten overload


def test_lean_keeps_what_each_node_stood_for():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    gm = captured_module(model, capture(model, (x,)))
    by_original = {original_target(n): n for n in gm.graph.nodes}
    assert aten.conv2d.default in by_original and by_original[aten.conv2d.default].target is torch.conv2d
    assert "0.weight" in by_original and by_original["0.weight"].target == "_lean_0_weight"
    # the direct attribute is the module's own parameter, shared, not copied
    assert gm._lean_0_weight is gm.get_submodule("0").weight
    assert lean(copy.deepcopy(gm)).code == gm.code  # idempotent


class _ManyOps(torch.nn.Module):
    """A tour of the aten ops exported graphs are made of, each called the way export records it."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 8)
        self.norm = torch.nn.LayerNorm(8)

    def forward(self, ids, x):
        e = self.norm(self.emb(ids))  # (2, 6, 8)
        a, b = torch.split(e, [3, 5], dim=-1)
        m, idx = x.max(dim=1)
        y = torch.cat([a.flatten(1), b.flatten(1)], dim=1).unsqueeze(0).squeeze(0)
        z = torch.stack([m, m * 2], dim=0).permute(1, 0, 2).sum(dim=(1, 2), keepdim=True)  # (2, 1)
        w = torch.where(x > 0, x, torch.full_like(x, 0.5)).expand(2, 4, 5).mean(dim=(1, 2))
        q = torch.div(x, 3.0, rounding_mode="floor") + torch.pow(x, 2) - x.clone().select(1, 0).unsqueeze(1)
        return y.sum(1) + z.squeeze(1) + w + idx.float().sum(1), q


def test_lean_calls_compute_the_same_on_a_tour_of_ops():
    model = _ManyOps().eval()
    inputs = (torch.randint(0, 50, (2, 6)), torch.randn(2, 4, 5))
    captured = capture(model, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fxfusion.planning.rewrite import runnable_graph

        plain = runnable_graph(captured, 0, model)  # aten overloads, as exported
        leaned = lean(copy.deepcopy(plain))
    assert sum(n.op == "call_method" for n in leaned.graph.nodes) >= 2  # e.g. expand, view
    with torch.no_grad():
        want, got = plain(*inputs), leaned(*inputs)
    for a, b in zip(torch.utils._pytree.tree_leaves(want), torch.utils._pytree.tree_leaves(got)):
        assert torch.equal(a, b)


class _MovesToDevice(torch.nn.Module):
    """Hugging Face GPT-2 and Llama write ``hidden + pos.to(hidden.device)``: export records aten.to.dtype_layout."""

    def __init__(self):
        super().__init__()
        self.pos = torch.nn.Embedding(8, 4)

    def forward(self, x):  # x: (2, 8, 4)
        pos = self.pos(torch.arange(x.shape[1], device=x.device))  # (8, 4)
        return x + pos.to(x.device)


def test_to_device_keeps_its_aten_call():
    """Tensor.to's parser takes no layout=: leaning aten.to.dtype_layout into it raised TypeError in --apply."""
    model, x = _MovesToDevice().eval(), torch.randn(2, 8, 4)
    captured = capture(model, (x,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = captured_module(model, captured)
    assert aten.to.dtype_layout in [original_target(n) for n in gm.graph.nodes]  # what export records for .to(device)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    assert binding_for(aten.to.dtype_layout) is None
    assert binding_for(aten.to.dtype) == ("call_method", "to")  # .to(torch.float64): the binding parses it
