"""`fxfusion analyze` through typer's CliRunner: every format validates, every bad input is one line and exit 1."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fxfusion.cli.commands import app
from fxfusion.profiles.schema import schema_errors

MODELS = Path(__file__).resolve().parent.parent / "models"
runner = CliRunner()


def _run(*args):
    result = runner.invoke(app, ["analyze", *map(str, args)])
    err = result.stderr if result.stderr_bytes is not None else result.output
    return result, err


def _model_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "user_model.py"
    path.write_text("import torch\nimport torch.nn as nn\n" + textwrap.dedent(body))
    return path


GOOD = "def get_model():\n    return nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval()\n" \
       "def get_inputs():\n    return torch.randn(4, 8)\n"

BAD_FILES = {
    "missing file": (None, "model file {path} does not exist"),
    "raises on import": ("import torch_tensorrt_not_installed\n",
                         "importing {path} raised ModuleNotFoundError: No module named 'torch_tensorrt_not_installed'"),
    "nothing model-like": ("def helper():\n    return 1\n", "{path} defines no model"),
    "inputs do not fit": ("def get_model():\n    return nn.Linear(8, 2)\ndef get_inputs():\n"
                          "    return torch.randn(3, 5)\n", "the example inputs of {path} do not fit the model"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_model_file_is_one_line_and_writes_nothing(case, tmp_path):
    body, message = BAD_FILES[case]
    path = tmp_path / "user_model.py" if body is None else _model_file(tmp_path, body)
    out = tmp_path / "report.json"
    result, err = _run(path, "--match-only", "--format", "json", "-o", out)
    assert result.exit_code == 1, result.output
    assert err.startswith(f"error: {message.format(path=path)}")
    assert err.count("\n") == 1 and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--format", "yaml"], "unknown --format 'yaml'; choose table, json, markdown, html"),
    (["--dtype", "int4"], "unknown dtype int4"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--profile", "p.json", "--measure"], "--profile and --measure are alternatives"),
    (["--match-only", "--measure"], "--match-only makes no decisions"),
    (["--profile", "no/such/profile.json"], "profile no/such/profile.json does not exist"),
    (["-o", "no/such/folder/r.json"], "cannot write no/such/folder/r.json: folder no/such/folder does not exist"),
    (["--threads", "0"], "--threads must be at least 1"),
])
def test_bad_options_are_one_line(args, message, tmp_path):
    path = _model_file(tmp_path, GOOD)
    result, err = _run(path, *args)
    assert result.exit_code == 1 and message in err and err.count("\n") == 1, err


def test_corrupt_profile_is_one_line(tmp_path):
    profile = tmp_path / "p.json"
    profile.write_text('{"kind": "fxfusion.profile", "entries": [')
    result, err = _run(_model_file(tmp_path, GOOD), "--profile", profile)
    assert result.exit_code == 1 and "is not valid JSON" in err and err.count("\n") == 1


def test_json_to_stdout_validates_even_when_the_model_prints(tmp_path):
    path = _model_file(tmp_path, GOOD.replace("def get_inputs():", "print('loading weights...')\n"
                                                                   "def get_inputs():"))
    result = runner.invoke(app, ["analyze", str(path), "--match-only", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert schema_errors(report, "analysis") == []
    assert [(s["pattern"], s["status"]) for s in report["sites"]] == [("linear_bias_relu", "fusible")]
    assert report["metadata"]["entry"] == "get_model()+get_inputs()"


@pytest.mark.parametrize("fmt,check", [
    ("json", lambda text: schema_errors(json.loads(text), "analysis") == []),
    ("markdown", lambda text: text.startswith("# fxfusion analysis: ") and "| g0.s1 | causal_attention |" in text),
    ("table", lambda text: "causal_attention" in text and "6 sites: 3 fusible, 0 illegal, 3 already fused" in text),
])
def test_every_format_is_written_atomically(fmt, check, tmp_path):
    out = tmp_path / f"report.{fmt}"
    result, err = _run(MODELS / "transformer_block.py", "--match-only", "--format", fmt, "-o", out)
    assert result.exit_code == 0, err
    assert check(out.read_text()) and f"wrote {out} (6 sites)" in err
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left behind


def test_html_format_uses_the_report_module(tmp_path):
    pytest.importorskip("fxfusion.reports.html")
    out = tmp_path / "report.html"
    result, err = _run(MODELS / "shared_conv.py", "--match-only", "--format", "html", "-o", out)
    assert result.exit_code == 0, err
    html = out.read_text()
    assert "<html" in html.lower() and "104593" in html


def test_named_callable_with_dtype_from_a_profile(tmp_path, tiny_profile):
    path = _model_file(tmp_path, """
        def build():
            model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            return model.eval(), torch.randn(1, 16, 16, 16)
    """)
    out = tmp_path / "report.json"
    result, err = _run(f"{path}:build", "--profile", tiny_profile, "--format", "json", "-o", out)
    assert result.exit_code == 0, err
    report = json.loads(out.read_text())
    assert schema_errors(report, "analysis") == []
    (site,) = report["sites"]
    assert site["pattern"] == "conv2d_bn_relu" and site["decision"]["exact"] and site["verdict"] in (
        "fuse", "neutral", "avoid")
    assert report["metadata"]["mode"] == "profile" and report["metadata"]["entry"] == "build()"


def test_dtype_flag_moves_the_model(tmp_path):
    out = tmp_path / "report.json"
    result, err = _run(MODELS / "mlp_block.py", "--match-only", "--dtype", "bfloat16", "--format", "json", "-o", out)
    assert result.exit_code == 0, err
    report = json.loads(out.read_text())
    assert {s["dtype"] for s in report["sites"]} == {"bfloat16"} and report["metadata"]["dtype"] == "bfloat16"


def test_graph_breaks_are_reported_not_failed(tmp_path):
    out = tmp_path / "report.json"
    result, err = _run(MODELS / "dynamic_control.py", "--match-only", "--format", "json", "-o", out)
    assert result.exit_code == 0, err
    report = json.loads(out.read_text())
    assert report["capture"]["method"] == "dynamo" and report["capture"]["graphs"] == 2
    assert report["capture"]["graph_breaks"][0].startswith("data-dependent control flow")
    assert [s["id"] for s in report["sites"]] == ["g0.s0", "g1.s0"]


def test_live_measurement_is_the_default(tmp_path, monkeypatch):
    monkeypatch.setattr("fxfusion.cli.analyze.PROFILE_FOLDER", tmp_path)  # no profile of this machine there
    out = tmp_path / "report.json"
    result, err = _run(MODELS / "mobilenet_block.py", "--no-compile", "--format", "json", "-o", out)
    assert result.exit_code == 0, err
    report = json.loads(out.read_text())
    assert report["metadata"]["mode"] == "measure" and schema_errors(report, "analysis") == []
    assert all(s["decision"] is not None and s["baseline_variant"] == "eager" for s in report["sites"])
    assert "analyzing 1/2: g0.s0 conv2d_bn_relu B=2" in err and "elapsed" in err  # plain progress off a TTY


def test_apply_verifies_and_puts_the_result_in_the_report(tmp_path, monkeypatch, fast_planning_specs):
    monkeypatch.setattr("fxfusion.cli.analyze.PROFILE_FOLDER", tmp_path)  # measured live
    pytest.importorskip("fxfusion.planning.plan")
    pytest.importorskip("fxfusion.planning.verify")
    out = tmp_path / "report.json"
    result, err = _run(MODELS / "transformer_block.py", "--no-compile", "--apply", "--format", "json", "-o", out)
    report = json.loads(out.read_text())
    assert schema_errors(report, "analysis") == []
    verification = report["verification"]
    # Which sites are 'fuse' depends on this machine's timings; every one of them must reach the verifier.
    fuse = {s["id"] for s in report["sites"] if s["verdict"] == "fuse"}
    assert verification["ok"] in (True, False) and isinstance(verification["outputs"], list)
    assert {r["site_id"] for r in verification["rewrites"]} <= fuse
    assert result.exit_code == (0 if verification["ok"] else 1), err
