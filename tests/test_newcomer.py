"""A newcomer's second hour (issue 27, items 8 and 9): warnings as one line, messages on stderr, bars that end at
their total, formats inferred from -o, a missing model file as its only line, --match-only without timing, and
plain grammar."""

from __future__ import annotations

import importlib
import io
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fxfusion.cli.commands import app
from fxfusion.errors import FxFusionError
from fxfusion.graph.loader import as_example_inputs
from fxfusion.profiles.profile import Profile
from fxfusion.reports.console import CalibrationProgress, print_summary, summary_table, warnings_line
from fxfusion.reports.text import total_line
from tests.helpers import TINY_SPEC

ROOT = Path(__file__).resolve().parent.parent
MLP = str(ROOT / "models" / "mlp_block.py")
NO_CEILINGS = {"matmul": [], "bandwidth": [], "best_gflops": {}, "best_gbs": None}
runner = CliRunner()
NOISY = "linear_bias[M=64,K=256,N=256]:float32@cpu [{}] is neutral: noisy after 3 measurement(s): ..."


@pytest.fixture
def fast_calibration(monkeypatch):
    cal = importlib.import_module("fxfusion.calibration.calibrate")
    monkeypatch.setattr(cal, "QUICK_SPEC", TINY_SPEC)
    monkeypatch.setattr(cal, "measure_ceilings", lambda *a, **k: dict(NO_CEILINGS))
    threads = torch.get_num_threads()
    yield cal
    torch.set_num_threads(threads)


# -- 8. output --------------------------------------------------------------------------------------------------------

def test_warnings_are_one_line_counted_by_kind_and_deduplicated():
    warnings = [NOISY.format("isolated"), NOISY.format("pipelined"), NOISY.format("pipelined"),
                "bfloat16 matmul runs at 3 GFLOP/s on this cpu, 40x slower than float32 (120 GFLOP/s): ..."]
    assert warnings_line(warnings, "p.json") == ("3 warnings (2 noisy verdicts made neutral, 1 slow dtypes): the full "
                                                 "list is in p.json")
    assert warnings_line([], "p.json") is None


def test_the_summary_prints_the_table_on_stdout_and_the_warnings_as_one_line_on_stderr(tiny_profile):
    profile = Profile.load(tiny_profile)
    profile.metadata["warnings"] = [NOISY.format("isolated")] * 48 + [NOISY.format("pipelined")]
    out, err = io.StringIO(), io.StringIO()
    print_summary(profile, out, err, where="p.json")
    assert "warning" not in out.getvalue() and "linear_bias_relu" in out.getvalue()
    assert err.getvalue() == "warning: 2 warnings (2 noisy verdicts made neutral): the full list is in p.json\n"


def test_calibrate_writes_its_table_to_stdout_and_its_messages_to_stderr(fast_calibration, tmp_path):
    out = tmp_path / "p.json"
    result = runner.invoke(app, ["calibrate", "--hardware", "generic-cpu", "--quick", "--patterns", "linear_bias",
                                 "--no-compile", "--threads", "1", "-o", str(out)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "wrote" not in result.stdout and "warning" not in result.stdout and "linear_bias" in result.stdout
    assert "1 thread)" in result.stdout  # not "1 threads"
    assert result.stderr.splitlines()[-1] == f"wrote {out} (2 entries)"
    assert sum(line.startswith("warning: ") for line in result.stderr.splitlines()) <= 1


@pytest.mark.parametrize("last", ["done", "resumed"])
def test_the_calibration_bar_ends_at_its_total(last):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    progress = CalibrationProgress(stream=Tty(), tty=True)
    progress.update(0, 3, None, "first")
    progress.update(1, 3, None, "done")
    progress.update(1, 3, None, "second")
    progress.update(2, 3, None, "done")
    if last == "resumed":
        progress.update(3, 3, None, "resumed")
    else:
        progress.update(2, 3, None, "third")
        progress.update(3, 3, None, "done")
    bar = progress.progress._bar
    assert bar.tasks[0].completed == bar.tasks[0].total == 3
    progress.__exit__(None, None, None)


# -- 9. smaller ---------------------------------------------------------------------------------------------------------

def test_analyze_infers_json_from_the_output_suffix(tmp_path):
    out = tmp_path / "t.json"
    result = runner.invoke(app, ["analyze", MLP, "--match-only", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["sites"] and result.stdout == ""
    n = len(report["sites"])
    assert result.stderr.splitlines()[-1] == f"wrote {out} ({n} site{'s' * (n != 1)})"


def test_match_only_does_not_time_the_forward_pass(tmp_path):
    out = tmp_path / "t.json"
    result = runner.invoke(app, ["analyze", MLP, "--match-only", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "timing the whole forward pass" not in result.stderr
    assert json.loads(out.read_text())["summary"]["forward_ms"] is None


def test_a_missing_model_file_is_its_only_line(tmp_path):
    result = runner.invoke(app, ["analyze", str(tmp_path / "nope.py")])
    assert result.exit_code == 1
    assert result.stderr == f"error: model file {tmp_path / 'nope.py'} does not exist\n"  # no "deciding in ..." first


def test_example_inputs_are_normalised_alike_for_the_library_and_the_cli():
    x = torch.randn(2, 3)
    assert as_example_inputs([x]) == as_example_inputs((x,)) == as_example_inputs(x) == (x,)
    with pytest.raises(FxFusionError, match=r"^example_inputs holds an int as input 1; example inputs must be "
                                            r"tensors"):
        as_example_inputs([x, 3])


def test_one_site_and_one_thread_are_singular(tiny_profile):
    summary = {"sites": 1, "fusible": 1, "illegal": 0, "already_fused": 0, "fuse": 1, "saved_ms_per_forward": 0.01,
               "bytes_saved_per_forward": 100, "forward_ms": None}
    assert total_line({"summary": summary}).startswith("1 site: 1 fusible")
    profile = Profile.load(tiny_profile)
    profile.metadata["threads"] = 1
    table = summary_table(profile).renderables[0]
    assert table.title.endswith("1 thread)")
