"""The calibration journal (OUTPUT.progress.jsonl) with real files: an interrupted or damaged calibration never loses
a finished entry and never mislabels one (issue 27, items 3-5)."""

from __future__ import annotations

import copy
import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fxfusion.cli.commands import app
from fxfusion.errors import FxFusionError
from fxfusion.profiles.profile import entry_to_dict
from tests.helpers import TINY_SPEC

ROOT = Path(__file__).resolve().parent.parent
NO_CEILINGS = {"matmul": [], "bandwidth": [], "best_gflops": {}, "best_gbs": None}
SMALL, LARGE = {"M": 64, "K": 256, "N": 256}, {"M": 512, "K": 1024, "N": 1024}  # linear_bias at the quick sizes
runner = CliRunner()


@pytest.fixture(scope="module")
def measured():
    """linear_bias's two quick entries, measured once for real; the tests replay them instead of timing again."""
    cal = importlib.import_module("fxfusion.calibration.calibrate")
    profile = cal.calibrate("generic-cpu", patterns="linear_bias", quick=True, compile_modes=(), spec=TINY_SPEC,
                            skip_ceilings=True)
    return {json.dumps(e.shape): e for e in profile.entries}


@pytest.fixture
def cal(measured, monkeypatch):
    """calibrate with entries replayed from ``measured`` (``cal.calls`` lists the shapes measured; an entry of
    ``cal.interrupt_at`` raises KeyboardInterrupt as Ctrl-C would)."""
    module = importlib.import_module("fxfusion.calibration.calibrate")
    module.calls, module.interrupt_at = [], None

    def replay(pattern, shape, *args, **kwargs):
        if shape == module.interrupt_at:
            raise KeyboardInterrupt
        module.calls.append(shape)
        return copy.deepcopy(measured[json.dumps(shape)])

    monkeypatch.setattr(module, "measure_entry", replay)
    monkeypatch.setattr(module, "measure_ceilings", lambda *a, **k: dict(NO_CEILINGS))
    monkeypatch.setattr(module, "QUICK_SPEC", TINY_SPEC)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)


def _run(cal, out: Path, **kwargs):
    notes = []
    kwargs = {"patterns": "linear_bias", "quick": True, "compile_modes": (), "output": out, "on_note": notes.append,
              **kwargs}
    return cal.calibrate("generic-cpu", **kwargs), notes


def _interrupted(cal, out: Path, **kwargs) -> Path:
    """A run stopped while measuring the second entry: the journal holds the first."""
    cal.interrupt_at = LARGE
    with pytest.raises(KeyboardInterrupt):
        _run(cal, out, **kwargs)
    cal.interrupt_at, cal.calls[:] = None, []
    return out.with_name(out.name + ".progress.jsonl")


def _cli(*args):
    result = runner.invoke(app, ["calibrate", "--hardware", "generic-cpu", "--quick", "--patterns", "linear_bias",
                                 "--no-compile", *args])
    return result, (result.stderr if result.stderr_bytes is not None else result.output)


def test_a_run_without_resume_refuses_to_drop_a_journal_of_finished_entries(cal, tmp_path):
    out = tmp_path / "p.json"
    journal = _interrupted(cal, out)
    before = journal.read_text()
    result, err = _cli("-o", str(out))
    assert result.exit_code == 1 and err.count("\n") == 1
    assert err == (f"error: {journal} holds 1 finished entry of an earlier run: pass --resume to continue it, or "
                   "delete that file to start over\n")
    assert journal.read_text() == before and cal.calls == [] and not out.exists()


def test_resume_says_how_many_entries_it_reused_and_measures_only_the_rest(cal, tmp_path):
    out = tmp_path / "p.json"
    journal = _interrupted(cal, out)
    profile, notes = _run(cal, out, resume=True)
    assert f"resuming from {journal}: 1 finished entry reused" in notes
    assert cal.calls == [LARGE] and [e.shape for e in profile.entries] == [SMALL, LARGE]
    assert out.exists() and not journal.exists()


@pytest.mark.parametrize("first,then,difference", [
    ({"threads": 1}, {"threads": 2}, "--threads: 1 there, 2 now"),
    ({}, {"compile_modes": ("compile",)}, "the compile variants (--no-compile): none there, compile now"),
    ({}, {"dtypes": "float32,float64"}, "--dtypes: float32 there, float32,float64 now"),
    ({}, {"quick": False, "sizes": "quick"}, "the timing rounds (--quick)"),
])
def test_resume_under_other_settings_is_refused_naming_the_difference(cal, tmp_path, first, then, difference):
    out = tmp_path / "p.json"
    journal = _interrupted(cal, out, **first)
    before = journal.read_text()
    with pytest.raises(FxFusionError) as err:
        _run(cal, out, resume=True, **then)
    message = str(err.value)
    assert message.startswith(f"--resume: {journal} was measured with other settings (") and difference in message
    assert message.endswith("run with the same options, or delete that file to start over")
    assert journal.read_text() == before and cal.calls == []


def test_resume_with_other_threads_through_the_cli_is_one_line(cal, tmp_path):
    out = tmp_path / "p.json"
    journal = _interrupted(cal, out, threads=1)
    result, err = _cli("-o", str(out), "--resume", "--threads", "2")
    assert result.exit_code == 1 and err.count("\n") == 1 and "--threads: 1 there, 2 now" in err
    assert str(journal) in err and "Traceback" not in result.output


def test_a_cut_off_last_line_is_dropped_and_the_next_entry_starts_on_a_fresh_line(cal, measured, tmp_path,
                                                                                   monkeypatch):
    out = tmp_path / "p.json"
    journal = _interrupted(cal, out)
    second = json.dumps(entry_to_dict(measured[json.dumps(LARGE)]))
    journal.write_text(journal.read_text() + second[:len(second) // 2])  # the write of entry 2 cut off
    assert cal.interrupted_message(out).startswith("interrupted: no profile was written; the 1 finished entry is "
                                                   "kept in ")
    monkeypatch.setattr(cal.Profile, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # stopped after entry 2 was measured again, before the profile
        _run(cal, out, resume=True)
    assert cal.calls == [LARGE]
    lines = journal.read_text().split("\n")
    assert lines[-1] == "" and len(lines) == 4  # header, entry 1, entry 2, each whole on its own line
    assert [json.loads(line).get("shape") for line in lines[1:3]] == [SMALL, LARGE]
    assert "the 2 finished entries are kept" in cal.interrupted_message(out)


def test_the_resume_note_says_a_cut_off_line_was_dropped(cal, tmp_path):
    out = tmp_path / "p.json"
    journal = _interrupted(cal, out)
    journal.write_text(journal.read_text() + '{"pattern": "linear_bias", "sha')
    _, notes = _run(cal, out, resume=True)
    assert (f"resuming from {journal}: 1 finished entry reused; dropped a last line cut off by an interruption "
            "(measured again)") in notes


@pytest.mark.parametrize("resume", [True, False])
def test_undecodable_bytes_are_one_line_naming_the_file_and_the_fix(cal, tmp_path, resume):
    out = tmp_path / "p.json"
    journal = out.with_name(out.name + ".progress.jsonl")
    journal.write_bytes(b'{"kind": "fxfusion.calibration-journal"}\n\xff\xfe\x00garbage')
    result, err = _cli("-o", str(out), *(["--resume"] if resume else []))
    assert result.exit_code == 1 and err.count("\n") == 1
    assert err == (f"error: {journal} is not a calibration journal (bytes at offset 41 are not text): delete it to "
                   "start over\n")
    assert journal.exists() and not out.exists()


def test_a_line_of_wrong_fields_is_not_counted_as_finished(cal, tmp_path):
    out = tmp_path / "p.json"
    journal = _interrupted(cal, out)
    journal.write_text(journal.read_text() + json.dumps({"pattern": "linear_bias", "shape": LARGE, "x": 1}) + "\n")
    assert "the 1 finished entry is kept" in cal.interrupted_message(out)
    profile, notes = _run(cal, out, resume=True)
    assert cal.calls == [LARGE] and len(profile.entries) == 2
    assert any("1 finished entry reused; dropped 1 line that is not a finished entry (measured again)" in n
               for n in notes)


def test_a_journal_without_settings_is_not_resumed(cal, tmp_path):
    """Written by an older fxfusion: what its entries were measured under is unknown, so none is reused as this
    run's."""
    out = tmp_path / "p.json"
    journal = _interrupted(cal, out)
    journal.write_text("\n".join(journal.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(FxFusionError, match="does not say what settings its entries were measured with"):
        _run(cal, out, resume=True)


def test_the_library_records_its_own_call_as_the_command(cal):
    profile, _ = _run(cal, None, threads=1)
    command = profile.metadata["command"]
    assert command.startswith("fxfusion.calibrate(hardware='generic-cpu', patterns='linear_bias', quick=True")
    assert "threads=1" in command and "compile_modes=()" in command and "on_note" not in command


ENTRY = "from fxfusion.cli import main; main()"


def test_sigterm_is_answered_like_ctrl_c_and_keeps_the_journal(tmp_path):
    """A real process: SIGTERM once the first entry is in the journal."""
    out = tmp_path / "p.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, "calibrate", "--hardware", "generic-cpu", "--quick",
                             "--patterns", "linear_bias", "--no-compile", "--threads", "1", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("calibrating 2/2"):
            break
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    journal = out.with_name(out.name + ".progress.jsonl")
    assert proc.returncode == 130, "".join(lines) + rest
    assert rest.splitlines()[-1] == (f"error: interrupted: no profile was written; the 1 finished entry is kept in "
                                     f"{journal}: run the same command with --resume to continue, or delete that "
                                     "file to start over")
    assert "Traceback" not in rest and not out.exists()
