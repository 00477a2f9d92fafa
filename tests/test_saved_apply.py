"""Applying a saved plan fast (fxfusion/planning/saved.py: apply_rebuilt, planned_once): the same planned module as
``fxfusion.planning.apply.apply`` gives, its code generated once instead of once per group, and not one sample timed
(a counting clock, checked to count where something is timed)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

import fxfusion
from fxfusion.graph.loader import load_model
from fxfusion.measure import timing
from fxfusion.planning import apply as apply_module
from fxfusion.planning.configs import Compiled
from fxfusion.planning.saved import apply_rebuilt, load_plan, rebuild, save_plan
from tests.helpers import runnable_plan_of

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(params=["resnet_basic", "mobilenet_block"])
def saved(request, tmp_path):
    loaded = load_model(MODELS / f"{request.param}.py")
    plan = runnable_plan_of(loaded.model, loaded.example_inputs)
    plan.choice = {"chosen": "planned", "why": "test", "candidates": []}
    assert len(plan.groups) >= 2
    return save_plan(plan, tmp_path / "plan.json", loaded.model, loaded.example_inputs), plan, loaded


def test_a_saved_plan_apply_takes_no_sample_and_the_counter_counts(saved):
    path, _, loaded = saved
    sample = timing.CpuClock.sample
    with timing.SampleCount() as clocks:
        timing.measure({"x": lambda: torch.ones(2) + 1}, timing.CpuClock(), timing.TimingSpec(warmup=1, rounds=2))
        assert clocks.n >= 2  # the control: a timing is counted
        clocks.n = 0
        planned = fxfusion.apply(loaded.model, fxfusion.load_plan(path), example_inputs=loaded.example_inputs)
        assert clocks.n == 0
    assert timing.CpuClock.sample is sample  # the clocks put back
    assert planned.fxfusion_rewrites and all(r.applied for r in planned.fxfusion_rewrites)


def test_the_fast_path_builds_the_module_apply_builds(saved):
    path, plan, loaded = saved
    fast = fxfusion.apply(loaded.model, load_plan(path), example_inputs=loaded.example_inputs)
    slow = apply_module.apply(loaded.model, rebuild(load_plan(path), loaded.model, loaded.example_inputs))
    assert fast.fxfusion_candidate == slow.fxfusion_candidate == "planned"
    assert [r.to_dict() for r in fast.fxfusion_rewrites] == [r.to_dict() for r in slow.fxfusion_rewrites]
    assert fast.code == slow.code
    assert dict(fast.named_buffers()).keys() == dict(slow.named_buffers()).keys()
    with torch.no_grad():
        torch.testing.assert_close(fast(*loaded.example_inputs), slow(*loaded.example_inputs), rtol=0, atol=0)


def test_the_code_is_generated_once_not_once_per_group(saved, monkeypatch):
    path, plan, loaded = saved
    calls = []
    original = torch.fx.GraphModule.recompile
    monkeypatch.setattr(torch.fx.GraphModule, "recompile", lambda gm: calls.append(gm) or original(gm))

    def generations(apply_fn, groups=None) -> int:
        rebuilt = rebuild(load_plan(path), loaded.model, loaded.example_inputs)
        if groups is not None:
            rebuilt.groups = rebuilt.groups[:groups]
        calls.clear()  # the capture's own are not the apply's
        apply_fn(loaded.model, rebuilt)
        return len(calls)

    # both generate the code a fixed number of times, however many groups (apply did once more per group before
    # 2026-12-07's change in rewrite._rewritten_graphs)
    assert len(plan.groups) >= 2
    once = generations(apply_rebuilt)
    assert generations(apply_module.apply) == once == generations(apply_module.apply, groups=1)


def test_a_compiled_candidate_is_wrapped_and_other_shapes_take_apply_s_path(saved):
    path, plan, loaded = saved
    compiled = fxfusion.apply(loaded.model, load_plan(path), candidate="planned+compile",
                              example_inputs=loaded.example_inputs)  # not called: nothing compiles
    assert isinstance(compiled, Compiled) and compiled.fxfusion_candidate == "planned+compile"
    assert all(r.applied for r in compiled.fxfusion_rewrites)
    dispatch = fxfusion.apply(loaded.model, load_plan(path), other_shapes="original",
                              example_inputs=loaded.example_inputs)
    assert isinstance(dispatch, apply_module.ShapeDispatch)
    eager = fxfusion.apply(loaded.model, load_plan(path), candidate="eager", example_inputs=loaded.example_inputs)
    assert eager.fxfusion_candidate == "eager" and eager.fxfusion_rewrites == []


class KeepsItsLastInput(torch.nn.Module):
    """As the zoo's decode step keeps its last call's KV cache in a plain object (transformers' StaticCache): after
    torch.export, a fake tensor, which a deepcopy cannot take (export restores a module's own attributes only)."""

    def __init__(self):
        super().__init__()
        self.linear, self.state = torch.nn.Linear(8, 8), types.SimpleNamespace(last=None)

    def forward(self, x):
        self.state.last = x
        return torch.relu(self.linear(x))


@pytest.mark.parametrize("chosen", ["eager", "compile"])
def test_a_whole_model_candidate_applies_to_a_module_that_keeps_its_last_input(tmp_path, chosen):
    model, inputs = KeepsItsLastInput().eval(), (torch.randn(4, 8),)
    plan = runnable_plan_of(model, inputs)
    plan.choice = {"chosen": chosen, "why": "test", "candidates": []}
    path = save_plan(plan, tmp_path / "plan.json", model, inputs)
    with pytest.raises(RuntimeError, match="data pointer"):  # the copy after a capture: what apply's path does
        apply_module.apply(model, rebuild(load_plan(path), model, inputs), candidate=chosen)
    with torch.no_grad():
        model(*inputs)  # as at start-up (or as `fxfusion apply` loads it): the model run, never captured yet
    applied = fxfusion.apply(model, load_plan(path), example_inputs=inputs)
    assert applied.fxfusion_candidate == chosen
    if chosen == "eager":
        with torch.no_grad():
            torch.testing.assert_close(applied(*inputs), torch.relu(model.linear(inputs[0])), rtol=0, atol=0)
