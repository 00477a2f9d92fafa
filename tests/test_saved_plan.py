"""A saved plan (fxfusion/planning/saved.py, schemas/plan.schema.json): written by `analyze --apply --save-plan` or
fxfusion.save_plan, applied again by `fxfusion apply` or fxfusion.apply(model, fxfusion.load_plan(path)) without a
single timing, and refused in one line where it does not fit: another model, device or torch version, a corrupt file.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import fxfusion
import fxfusion.measure.timing as timing
import fxfusion.planning.insitu as insitu_module
from fxfusion.cli.commands import app
from fxfusion.errors import FxFusionError, FxFusionWarning
from fxfusion.graph.loader import load_model
from fxfusion.planning.insitu import Overhead
from fxfusion.planning.plan import FusionPlan
from fxfusion.planning.saved import load_plan, rebuild, save_plan
from fxfusion.profiles.schema import schema_errors
from tests.helpers import OpCountClock, quick_apply, runnable_plan_of

pipeline_module = importlib.import_module("fxfusion.planning.pipeline")
MODELS = Path(__file__).resolve().parent.parent / "models"
runner = CliRunner()


def _cli(*args):
    result = runner.invoke(app, [*map(str, args)])
    err = result.stderr if result.stderr_bytes is not None else result.output
    return result, err


def _every_site_plan(loaded) -> FusionPlan:
    """Every legal site planned with the first manual variant that runs here (no timing): a plan with rewrites."""
    plan = runnable_plan_of(loaded.model, loaded.example_inputs)
    plan.choice = {"chosen": "planned", "why": "test", "candidates": [{"name": "planned", "median_ms": 1.0}]}
    return plan


@pytest.fixture
def saved(tmp_path):
    loaded = load_model(MODELS / "mobilenet_block.py")
    plan = _every_site_plan(loaded)
    assert plan.groups
    path = save_plan(plan, tmp_path / "plan.json", loaded.model, loaded.example_inputs)
    return path, plan, loaded


def refuse_timing(monkeypatch):
    """Every way fxfusion times something raises: applying a saved plan must take no timing at all."""
    def refuse(*args, **kwargs):
        raise AssertionError("a saved plan was applied with a timing")

    for name in ("measure", "measure_regimes", "measure_tight"):
        monkeypatch.setattr(timing, name, refuse)
    monkeypatch.setattr(timing.CpuClock, "sample", refuse)
    monkeypatch.setattr(timing.CudaClock, "sample", refuse)


@pytest.fixture
def no_timing(monkeypatch):
    refuse_timing(monkeypatch)


def test_the_saved_file_validates_and_holds_what_reapplying_needs(saved):
    path, plan, loaded = saved
    data = json.loads(path.read_text())
    assert schema_errors(data, "plan") == []
    assert data["kind"] == "fxfusion.plan" and data["schema_version"] == "1.0"
    assert [(g["id"], g["pattern"], g["variant"], g["nodes"]) for g in data["groups"]] == [
        (g.id, g.pattern, g.variant, g.nodes) for g in plan.groups]
    assert data["candidate"]["name"] == "planned"
    assert data["made"]["device"] == "cpu" and data["made"]["torch"] == torch.__version__
    assert data["model"]["inputs"] == [{"shape": list(loaded.example_inputs[0].shape), "dtype": "float32"}]
    assert len(data["model"]["fingerprint"]) == 64 and data["model"]["graphs"][0]["nodes"] > 0
    assert all("samples" not in json.dumps(g["evidence"]) for g in data["groups"])  # summaries, not raw samples


def test_a_loaded_plan_applies_with_no_timing_and_gives_the_same_model(saved, no_timing):
    path, plan, loaded = saved
    planned = fxfusion.apply(loaded.model, fxfusion.load_plan(path), example_inputs=loaded.example_inputs)
    assert planned.fxfusion_candidate == "planned"
    assert [(r.site_id, r.variant, r.applied) for r in planned.fxfusion_rewrites] == [
        (g.id, g.variant, True) for g in plan.groups]
    original = fxfusion.apply(loaded.model, plan)  # the plan as made, in this process
    with torch.no_grad():
        torch.testing.assert_close(planned(*loaded.example_inputs), original(*loaded.example_inputs), rtol=0, atol=0)


def test_without_example_inputs_they_are_made_from_the_saved_specs(saved, no_timing):
    path, plan, loaded = saved
    rebuilt = rebuild(load_plan(path), loaded.model)
    assert [g.id for g in rebuilt.groups] == [g.id for g in plan.groups]


def test_a_plan_of_another_torch_version_is_refused_unless_allowed(saved, tmp_path):
    path, plan, loaded = saved
    data = json.loads(path.read_text())
    data["made"]["torch"] = "2.4.0"
    other = tmp_path / "old.json"
    other.write_text(json.dumps(data))
    with pytest.raises(FxFusionError, match=r"torch version: the plan was made with 2\.4\.0, this is "):
        fxfusion.apply(loaded.model, load_plan(other))
    with pytest.warns(FxFusionWarning, match="applied anyway"):
        planned = fxfusion.apply(loaded.model, load_plan(other), allow_mismatch=True)
    assert all(r.applied for r in planned.fxfusion_rewrites)


def test_a_plan_of_another_device_names_both(saved, tmp_path):
    path, _, loaded = saved
    data = json.loads(path.read_text())
    data["made"].update(device="cuda", device_name="NVIDIA H200", cuda="12.8", triton="3.5.0")
    other = tmp_path / "h200.json"
    other.write_text(json.dumps(data))
    with pytest.raises(FxFusionError, match=r"device kind: the plan was made with cuda, this is cpu"):
        fxfusion.apply(loaded.model, load_plan(other))


def test_cli_a_plan_for_another_model_is_one_line_exit_1(saved):
    path, _, _ = saved
    result, err = _cli("apply", path, MODELS / "resnet_basic.py")
    assert result.exit_code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path} does not fit here: the example inputs are ")


@pytest.mark.parametrize("damage", ["truncated", "not_json", "not_a_plan", "schema"])
def test_cli_a_corrupt_plan_file_is_one_line_exit_1(saved, tmp_path, damage):
    path, _, _ = saved
    text = path.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text({"truncated": text[: len(text) // 2], "not_json": "plan\n",
                    "not_a_plan": json.dumps({"kind": "fxfusion.profile"}),
                    "schema": json.dumps({**json.loads(text), "groups": [{"id": "g0.s0"}]})}[damage])
    result, err = _cli("apply", bad, MODELS / "mobilenet_block.py")
    assert result.exit_code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], err
    assert {"truncated": "is not valid JSON", "not_json": "is not valid JSON", "not_a_plan": "is not an fxfusion plan",
            "schema": "does not match the plan schema at $.groups[0]"}[damage] in lines[0]


def test_cli_a_missing_plan_is_one_line(tmp_path):
    result, err = _cli("apply", tmp_path / "none.json", MODELS / "mobilenet_block.py")
    assert result.exit_code == 1 and err.strip() == f"error: plan {tmp_path / 'none.json'} does not exist"


# -- analyze --apply --save-plan, then fxfusion apply ------------------------------------------------------------------

@pytest.fixture
def quick_pinned_apply(monkeypatch):
    """As tests/test_cli_apply.py: verification quick, the overhead zero, regions priced by op count."""
    quick_apply(monkeypatch)
    monkeypatch.setattr(pipeline_module, "measure_overhead", lambda *a, **k: Overhead(0.0, 0.0, 0.0))
    monkeypatch.setattr(insitu_module, "model_clock", lambda device: OpCountClock())


def test_cli_analyze_saves_the_verified_plan_and_apply_reapplies_it(folding_profile, tmp_path, quick_pinned_apply,
                                                                      monkeypatch):
    plan_path = tmp_path / "plan.json"
    result, err = _cli("analyze", MODELS / "mobilenet_block.py", "--profile", folding_profile, "--apply",
                       "--format", "json", "-o", tmp_path / "report.json", "--save-plan", plan_path)
    assert result.exit_code == 0, err
    assert f"wrote {plan_path} (2 rewrites, candidate " in err
    data = json.loads(plan_path.read_text())
    assert schema_errors(data, "plan") == []
    assert [(g["id"], g["variant"]) for g in data["groups"]] == [("g0.s0", "bn_folded"), ("g0.s1", "bn_folded")]
    report = json.loads((tmp_path / "report.json").read_text())
    assert data["candidate"]["name"] == report["verification"]["plan"]["chosen_candidate"]
    assert data["evidence"]["candidates"]  # the candidates' medians, as measured
    assert all(g["evidence"]["verdict"] == "fuse" and g["evidence"]["predicted_saving_ms"] is not None
               for g in data["groups"])

    refuse_timing(monkeypatch)
    result, err = _cli("apply", plan_path, MODELS / "mobilenet_block.py")
    assert result.exit_code == 0, err
    line = result.stdout.strip()
    assert line.startswith(f"{plan_path}: 2 of 2 rewrites applied to ") and "nothing timed" in line
    assert line.endswith(")") and "outputs match float64" in line


def test_cli_save_plan_needs_apply(tmp_path):
    result, err = _cli("analyze", MODELS / "mobilenet_block.py", "--save-plan", tmp_path / "plan.json")
    assert result.exit_code == 1 and "--save-plan saves the plan --apply makes" in err
    assert not (tmp_path / "plan.json").exists()


def test_a_saved_plan_keeps_only_the_groups_its_chosen_candidate_applies(tmp_path, no_timing):
    # a class its context measured slower is left out of that candidate; the file keeps no timings to leave it out
    # again, so it must not hold it: re-applying every group would hand back a model nobody timed
    from fxfusion.planning.prediction import Context
    from tests.helpers import class_timing

    loaded = load_model(MODELS / "mobilenet_block.py")
    plan = _every_site_plan(loaded)
    assert len(plan.groups) >= 2
    slow = plan.groups[0]
    slow.classes[Context.EAGER] = class_timing([slow], -1.0)
    path = save_plan(plan, tmp_path / "plan.json", loaded.model, loaded.example_inputs)
    data = json.loads(path.read_text())
    assert [g["id"] for g in data["groups"]] == [g.id for g in plan.groups[1:]]
    planned = fxfusion.apply(loaded.model, fxfusion.load_plan(path), example_inputs=loaded.example_inputs)
    assert [r.site_id for r in planned.fxfusion_rewrites] == [g.id for g in plan.groups[1:]]
    with torch.no_grad():  # what the chosen candidate was, in this process
        torch.testing.assert_close(planned(*loaded.example_inputs),
                                   fxfusion.apply(loaded.model, plan)(*loaded.example_inputs), rtol=0, atol=0)
