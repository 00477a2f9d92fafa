"""A planned model holds the tensors it runs with, not the ones its rewrites replaced (graph.edit.drop_unused_attributes)."""

from __future__ import annotations

import torch

import fxfusion
from fxfusion.graph.loader import load_model
from tests.helpers import MODELS, typical_plan


def _tensors(module: torch.nn.Module) -> dict[int, int]:
    """Every tensor the module holds (parameters, buffers, plain attributes), by storage, with its bytes."""
    out = {}
    for sub in module.modules():
        held = list(sub._parameters.values()) + list(sub._buffers.values())
        held += [v for v in vars(sub).values() if isinstance(v, torch.Tensor)]
        for t in held:
            if t is not None:
                out[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return out


def test_folded_convs_leave_no_batchnorm_behind_and_the_model_still_verifies():
    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")  # three conv+BN sites, all folded
    planned = fxfusion.apply(loaded.model, plan, candidate="planned")
    assert all(r.applied for r in planned.fxfusion_rewrites)
    names = [n for n, _ in planned.named_buffers()] + [n for n, _ in planned.named_parameters()]
    assert not [n for n in names if "running_mean" in n or "running_var" in n], names
    original = sum(_tensors(loaded.model).values())
    # three folded weights and biases replace three convs' weights and three BatchNorms' four tensors each
    assert sum(_tensors(planned).values()) < original
    with torch.no_grad():
        torch.testing.assert_close(planned(*loaded.example_inputs), loaded.model(*loaded.example_inputs),
                                   rtol=1e-4, atol=1e-4)


def test_the_users_model_keeps_every_tensor():
    loaded = load_model(MODELS / "resnet_basic.py")
    before = {n: t.clone() for n, t in loaded.model.state_dict().items()}
    fxfusion.apply(loaded.model, typical_plan("resnet_basic"), candidate="planned")
    after = loaded.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_tensor_still_read_is_kept_and_the_rest_goes():
    from fxfusion.graph.edit import drop_unused_attributes

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return torch.nn.functional.linear(x, self.w)

    gm = torch.fx.symbolic_trace(M())
    assert [n.target for n in gm.graph.nodes if n.op == "get_attr"] == ["w"]
    gm.register_parameter("stale", torch.nn.Parameter(torch.randn(4, 4)))  # what a rewrite replaced
    gm.add_submodule("folded", torch.nn.BatchNorm1d(4))
    dropped = drop_unused_attributes(gm)
    assert sorted(dropped) == ["folded.bias", "folded.num_batches_tracked", "folded.running_mean",
                               "folded.running_var", "folded.weight", "stale"]
    assert not hasattr(gm, "folded") and [n for n, _ in gm.named_parameters()] == ["w"]
    assert gm(torch.ones(2, 4)).shape == (2, 4)
