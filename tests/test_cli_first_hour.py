"""A newcomer's first hour (issue 14): progress off a terminal, tables that fit the terminal, bounded --threads,
output paths checked before any work, and Ctrl-C answered in one line at any moment.

typer's CliRunner is not a terminal, so it sees what a pipe or a log file sees; ``COLUMNS`` gives it a width.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fxfusion.cli.commands import app
from fxfusion.profiles.profile import Profile
from fxfusion.reports.console import output_width, print_summary
from fxfusion.reports.progress import StepProgress
from fxfusion.reports.text import render_table
from tests.helpers import TINY_SPEC

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CPU = ROOT / "profiles" / "generic-cpu-epyc-2core.json"
ANALYSIS = ROOT / "docs" / "results" / "h200-analyze" / "transformer_block.json"
runner = CliRunner()
NO_CEILINGS = {"matmul": [], "bandwidth": [], "best_gflops": {}, "best_gbs": None}


def _err(result) -> str:
    return result.stderr if result.stderr_bytes is not None else result.output


@pytest.fixture
def fast_calibration(monkeypatch):
    """calibrate's real code path with the tiny timing spec and no ceilings: a second, not a minute."""
    cal = importlib.import_module("fxfusion.calibration.calibrate")
    monkeypatch.setattr(cal, "QUICK_SPEC", TINY_SPEC)
    monkeypatch.setattr(cal, "measure_ceilings", lambda *a, **k: dict(NO_CEILINGS))
    return cal


# -- 1. progress off a terminal --------------------------------------------------------------------------------------

def test_progress_lines_count_and_estimate_the_time_left():
    now = [0.0]
    out = io.StringIO()
    progress = StepProgress("calibrating", stream=out, tty=False, clock=lambda: now[0])
    for i in range(4):
        progress.step(i, 4, f"entry {i}")
        now[0] += 10.0
    progress.finish(4, 4)
    lines = out.getvalue().splitlines()
    assert lines[0] == "calibrating 1/4: entry 0 (0:00 elapsed)"
    assert lines[2] == "calibrating 3/4: entry 2 (0:20 elapsed, about 0:20 left)"  # 10 s a step, 2 to go
    assert lines[-1] == "calibrating: 4/4 done in 0:40"


def test_resumed_steps_do_not_shorten_the_estimate():
    now = [100.0]
    out = io.StringIO()
    progress = StepProgress("calibrating", stream=out, tty=False, clock=lambda: now[0])
    progress.skip(8, 10)  # eight entries read back from a journal, in no time
    progress.step(8, 10, "ninth")
    now[0] += 30.0
    progress.step(9, 10, "tenth")
    assert out.getvalue().splitlines() == ["calibrating 9/10: ninth (0:00 elapsed)",
                                           "calibrating 10/10: tenth (0:30 elapsed, about 0:30 left)"]


def test_calibrate_off_a_terminal_prints_plain_progress_to_stderr(fast_calibration, tmp_path):
    out = tmp_path / "p.json"
    result = runner.invoke(app, ["calibrate", "--hardware", "generic-cpu", "--quick", "--patterns", "linear_bias",
                                 "--no-compile", "-o", str(out)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    err = _err(result)
    assert "\x1b" not in err and "" not in err.splitlines()  # no control codes, no blank line
    assert "calibrating 1/2: linear_bias M=64 K=256 N=256 float32 (" in err
    assert "calibrating 2/2: linear_bias M=512 K=1024 N=1024 float32 (" in err and "left)" in err
    assert "calibrating: 2/2 done in " in err
    assert all(len(line) <= 80 for line in result.stdout.splitlines() if not line.startswith("wrote ")), result.stdout


def test_report_off_a_terminal_prints_a_line_per_plot(tiny_profile, tmp_path, monkeypatch):
    monkeypatch.setattr("fxfusion.reports.plots.to_data_uri", lambda fig: "data:image/png;base64,")  # no PNGs
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(tiny_profile), "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = [line for line in _err(result).splitlines() if line.startswith("drawing ")]
    plots = len({(e.pattern, e.dtype) for e in Profile.load(tiny_profile).entries}) + 1
    assert len(lines) == plots and lines[0].startswith(f"drawing 1/{plots}: speedup plot ")
    assert lines[-1].startswith(f"drawing {plots}/{plots}: roofline float32 (")


# -- 2. tables that fit the terminal ---------------------------------------------------------------------------------

def test_output_width_is_the_terminal_s_on_a_terminal_and_columns_or_wide_elsewhere(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("shutil.get_terminal_size", lambda *a, **k: os.terminal_size((97, 30)))
    assert output_width(Tty()) == 97
    monkeypatch.setenv("COLUMNS", "80")
    assert output_width(io.StringIO()) == 80
    monkeypatch.delenv("COLUMNS")
    assert output_width(io.StringIO()) == output_width(None) == 200


@pytest.mark.parametrize("width", [80, 100])
def test_calibration_table_fits_the_width_with_named_dimensions_and_whole_verdicts(width, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(width))
    profile = Profile.load(SHIPPED_CPU)
    buffer = io.StringIO()
    print_summary(profile, buffer)
    text = buffer.getvalue()
    assert max(len(line) for line in text.splitlines()) <= width, text
    rows = [line for line in text.splitlines() if line.startswith("│ ") and line.split("│")[1].strip()]
    assert len(rows) == len(profile.entries)  # each entry's first line names its pattern
    for row, entry in zip(rows, profile.entries):
        shown = entry.decision.display_verdict + (" (noisy)" if entry.decision.noisy else "")
        assert shown in [c.strip() for c in row.split("│")]  # whole, never "n…"; a noisy one says so
    assert "M=32" in text and "Cin=16" in text  # dimensions by name
    assert not any("roofline" in line for line in text.splitlines() if line.startswith("┃"))
    legend = " ".join(text.split("└")[-1].split())
    assert "the generic-cpu peaks are nominal" in legend
    assert "dtype float32 throughout" in legend and "fuse / avoid: the 95% CI" in legend


def test_analysis_table_fits_80_columns(monkeypatch):
    from rich.console import Console

    report = json.loads(ANALYSIS.read_text())
    console = Console(width=80, record=True, color_system=None, file=io.StringIO())
    console.print(render_table(report, 80))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for site in report["sites"]:
        assert site["id"] in text
    assert "hidden at 80 columns: legality" in text


def test_analyze_table_uses_the_width_it_is_given(tmp_path):
    """Not the fixed 160 columns it used to render at: here $COLUMNS, on a terminal the terminal's width."""
    model = ROOT / "models" / "transformer_block.py"
    narrow = runner.invoke(app, ["analyze", str(model), "--match-only"], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80
    assert "causal_attention" in narrow.stdout and "6 sites: 3 fusible" in " ".join(narrow.stdout.split())  # the pre-LN add + ln_2 writes its sum


# -- 8. --threads within bounds --------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["calibrate", "--hardware", "generic-cpu"],
                                     ["analyze", str(ROOT / "models" / "mlp_block.py")]])
def test_absurd_thread_count_is_one_line_not_a_segfault(command, tmp_path):
    before = torch.get_num_threads()
    result = runner.invoke(app, [*command, "--threads", "100000", "-o", str(tmp_path / "out.json")])
    err = _err(result)
    assert result.exit_code == 1 and err.startswith("error: --threads 100000 is more than ")
    assert err.count("\n") == 1 and torch.get_num_threads() == before


# -- 9. output paths checked first -----------------------------------------------------------------------------------

BAD_OUTPUTS = {"virtual file system": ("/proc/x.json", "cannot write /proc/x.json: folder /proc does not take new "
                                                       "files"),
               "a folder": ("{tmp}", "cannot write {tmp}: it is a folder"),
               "missing folder": ("{tmp}/no/p.json", "cannot write {tmp}/no/p.json: folder {tmp}/no does not exist")}


@pytest.mark.parametrize("case", BAD_OUTPUTS)
@pytest.mark.parametrize("command", ["calibrate", "analyze", "report", "compare"])
def test_unwritable_output_is_named_in_one_line_before_any_work(case, command, tmp_path, tiny_profile):
    if case == "virtual file system" and not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    path, message = (s.format(tmp=tmp_path) for s in BAD_OUTPUTS[case])
    args = {"calibrate": ["calibrate", "--hardware", "generic-cpu", "--patterns", "linear_bias"],
            "analyze": ["analyze", str(ROOT / "models" / "mlp_block.py"), "--match-only"],
            "report": ["report", str(tiny_profile)],
            "compare": ["compare", str(tiny_profile), str(tiny_profile)]}[command]
    result = runner.invoke(app, [*args, "-o", path])
    err = _err(result)
    assert result.exit_code == 1 and err == f"error: {message}" + err[len(message) + 7:]
    assert err.count("\n") == 1 and not err.startswith("\n")


# -- 10, 11. Ctrl-C --------------------------------------------------------------------------------------------------

# The console script's own code: `fxfusion` runs `from fxfusion.cli import main; main()`.  The child says when it
# reaches it, so the delay counts from there and not from an interpreter start that a loaded machine can slow down
# (before any fxfusion code runs, no Python handler can answer a Ctrl-C).
ENTRY = "import sys; sys.stderr.write('started\\n'); sys.stderr.flush(); from fxfusion.cli import main; main()"


@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_ctrl_c_at_any_moment_is_exit_130_and_one_line(delay, tmp_path):
    """A real process, interrupted while `import torch` runs (0.3 s) and later (1.5 s: still importing on a loaded
    machine, measuring the ceilings on a quiet one)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, "calibrate", "--hardware", "generic-cpu", "--quick",
                             "--patterns", "linear_bias", "--no-compile", "-o", str(tmp_path / "p.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            # as from a terminal, even where this test runs with SIGINT ignored (a background job)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stderr.readline() == "started\n"
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if not line.startswith(("measuring the ceilings", "calibrating "))]
    assert proc.returncode == 130, err
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), err
    assert not (tmp_path / "p.json").exists()


def test_interrupted_calibration_says_the_journal_is_kept_and_how_to_resume(fast_calibration, tmp_path,
                                                                            monkeypatch):
    cal = fast_calibration
    real, calls = cal.measure_entry, []

    def interrupted_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cal, "measure_entry", interrupted_on_second)
    out = tmp_path / "p.json"
    result = runner.invoke(app, ["calibrate", "--hardware", "generic-cpu", "--quick", "--patterns", "linear_bias",
                                 "--no-compile", "-o", str(out)])
    err = _err(result).splitlines()[-1]
    journal = tmp_path / "p.json.progress.jsonl"
    assert result.exit_code == 130 and journal.exists() and not out.exists()
    assert err == (f"error: interrupted: no profile was written; the 1 finished entry is kept in {journal}: run the "
                   f"same command with --resume to continue, or delete that file to start over")
    assert "half-written" not in _err(result)
