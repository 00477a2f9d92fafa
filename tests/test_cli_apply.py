"""`fxfusion analyze MODEL --apply`: the plan is applied and verified; a plan that does not verify exits 1.

Decisions come from the session's real calibration profile with its conv2d_bn_relu decisions set to fold BatchNorm,
so the rewrite under test is known; verification runs with the tiny timing spec and without the whole-model
torch.compile (tests/test_verify.py compiles once; the CLI wiring is what is tested here).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fxfusion.planning.insitu as insitu_module
from fxfusion.cli.commands import app
from fxfusion.profiles.schema import schema_errors
from fxfusion.planning.insitu import Overhead
from tests.helpers import OpCountClock, replace_rewrite

# The --apply pipeline looks these up in its own module: the fixtures below replace them there.
pipeline_module = importlib.import_module("fxfusion.planning.pipeline")
MODELS = Path(__file__).resolve().parent.parent / "models"
runner = CliRunner()


@pytest.fixture(autouse=True)
def quick_verification(fast_planning_specs):
    return fast_planning_specs


@pytest.fixture(autouse=True)
def no_capture_overhead(monkeypatch):
    """The captured graph's overhead is measured, so whether it refuses a tiny model's groups depends on the machine's
    noise; these tests pin it to zero so the rewrites under test always apply.  The refusal itself is tested below
    with a pinned large overhead (and in tests/test_plan.py)."""
    monkeypatch.setattr(pipeline_module, "measure_overhead", lambda *a, **k: Overhead(0.0, 0.0, 0.0))


@pytest.fixture(autouse=True)
def counted_in_model_timing(monkeypatch):
    """The groups' in-model timing, made deterministic: a region costs 1 us per aten op it runs (a rewrite that
    removes ops saves), so no group of these tests is refused by the noise of a shared machine."""
    monkeypatch.setattr(insitu_module, "model_clock", lambda device: OpCountClock())


def _run(*args):
    result = runner.invoke(app, ["analyze", *map(str, args)])
    err = result.stderr if result.stderr_bytes is not None else result.output
    return result, err


def test_apply_folds_and_verifies(folding_profile, tmp_path):
    out = tmp_path / "report.json"
    result, err = _run(MODELS / "mobilenet_block.py", "--profile", folding_profile, "--apply", "--format", "json",
                       "-o", out)
    assert result.exit_code == 0, err
    report = json.loads(out.read_text())
    assert schema_errors(report, "analysis") == []
    v = report["verification"]
    assert v["ok"] is True and v["reference"] == "float64"
    assert [(r["site_id"], r["variant"], r["applied"]) for r in v["rewrites"]] == [
        ("g0.s0", "bn_folded", True), ("g0.s1", "bn_folded", True)]
    assert all(o["ok"] and o["error"] < 1e-4 for o in v["outputs"])
    assert v["timings"]["eager"]["median_ms"] > 0 and v["timings"]["planned"]["median_ms"] > 0
    assert v["predicted_saving_ms"] is not None and v["measured_saving_ms"] is not None
    # predicted from the class of rewrites applied alone to the model, the rest eager; the groups' regions timed
    # inside the model and the library's own prediction are kept beside it
    assert v["prediction"] == "in_context" and v["plan"]["prediction"] == "in_model"
    assert all(g["in_model"]["saving_ms"] == g["predicted_saving_ms"] > 0 for g in v["plan"]["groups"])
    assert all(g["classes"]["eager"]["groups"] == ["g0.s0", "g0.s1"] for g in v["plan"]["groups"])
    assert v["regions_predicted_saving_ms"] == pytest.approx(
        sum(g["predicted_saving_ms"] for g in v["plan"]["groups"]) - v["plan"]["overhead_ms"])
    assert v["library_predicted_saving_ms"] is not None
    # stderr told each --apply stage as it ended, with its seconds (the JSON keeps them too)
    assert "--apply: regions timed in the model, " in err and "--apply: checked against float64" in err
    assert list(v["stages_s"]) == ["make_plan", "charge_overhead_measure", "measure_regions", "charge",
                                   "measure_eager_context", "measure_compiled", "verify_and_choose"]
    # and the steps of the last one, which holds the float64 run and the candidates' builds
    assert list(v["steps_s"]) == ["apply", "first_calls", "float64", "sensitivity", "planned_and_captured",
                                  "candidates", "timing"]
    assert sum(v["steps_s"].values()) <= v["stages_s"]["verify_and_choose"] + 0.1


def test_apply_table_shows_the_verification(folding_profile):
    result, err = _run(MODELS / "resnet_bottleneck.py", "--profile", folding_profile, "--apply")
    assert result.exit_code == 0, err
    assert "VERIFIED: outputs match the float64 reference" in result.stdout
    assert "planned" in result.stdout and "original (eager)" in result.stdout


def test_apply_of_a_wrong_rewrite_exits_1(folding_profile, monkeypatch, tmp_path):
    def wrong_fold(correct):
        def fold(gm, nodes, group):
            old, new = correct(gm, nodes, group)
            getattr(gm, new.args[1].target).mul_(2.0)  # the folded weight, doubled
            return old, new
        return fold

    replace_rewrite(monkeypatch, "bn_folded", wrong_fold)
    out = tmp_path / "report.json"
    result, err = _run(MODELS / "mobilenet_block.py", "--profile", folding_profile, "--apply", "--format", "json",
                       "-o", out)
    assert result.exit_code == 1
    assert err.strip().splitlines()[-1].startswith("error: the fused model did not verify: output 0 (float32) has "
                                                   "relative error")
    report = json.loads(out.read_text())  # the report is still written, with the failed verification in it
    assert report["verification"]["ok"] is False


def test_apply_on_the_reused_conv_model_leaves_the_shared_conv_alone(folding_profile, tmp_path):
    out = tmp_path / "report.json"
    result, err = _run(MODELS / "shared_conv.py", "--profile", folding_profile, "--apply", "--format", "json",
                       "-o", out)
    assert result.exit_code == 0, err
    v = json.loads(out.read_text())["verification"]
    assert v["ok"] is True
    assert [r["site_id"] for r in v["rewrites"] if r["applied"]] in ([], ["g0.s2"])  # only the unshared head


def test_apply_refuses_groups_that_do_not_pay_for_the_captured_graph(folding_profile, monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline_module, "measure_overhead", lambda *a, **k: Overhead(1e3, 1e3, 1e3))
    out = tmp_path / "report.json"
    result, err = _run(MODELS / "mobilenet_block.py", "--profile", folding_profile, "--apply", "--format", "json",
                       "-o", out)
    assert result.exit_code == 0, err
    v = json.loads(out.read_text())["verification"]
    assert v["ok"] is True and not any(r["applied"] for r in v["rewrites"])
    refused = {r["site_id"]: r["why"] for r in v["plan"]["refused"]}
    assert refused == {"g0.s0": "below_overhead", "g0.s1": "below_overhead"}



def test_apply_markdown_report_carries_the_verification(folding_profile, tmp_path):
    out = tmp_path / "report.md"
    result, err = _run(MODELS / "resnet_bottleneck.py", "--profile", folding_profile, "--apply", "--format",
                       "markdown", "-o", out)
    assert result.exit_code == 0, err
    text = out.read_text()
    assert "## Verification" in text and "**VERIFIED**" in text
    assert "| planned |" in text and "Saving per forward: predicted" in text
    assert "| g0.s0 | conv2d_bn_relu | bn_folded |" in text


@pytest.mark.parametrize("flag,passed", [([], None), (["--compiled-regime"], True), (["--no-compiled-regime"], False)])
def test_the_compiled_regime_is_asked_for_on_the_command_line(folding_profile, monkeypatch, flag, passed,
                                                               quick_verification):
    import dataclasses

    import fxfusion.cli.analyze as cli_analyze

    seen = []

    def spy(analysis, model, inputs, planner):  # what the CLI asked; run without it (no compile in this test)
        seen.append(planner.compiled_regime)
        return quick_verification(analysis, model, inputs, dataclasses.replace(planner, compiled_regime=False))

    monkeypatch.setattr(cli_analyze, "apply_and_verify", spy)
    result, err = _run(MODELS / "mobilenet_block.py", "--profile", folding_profile, "--apply", *flag)
    assert result.exit_code == 0, err
    assert seen == [passed]
