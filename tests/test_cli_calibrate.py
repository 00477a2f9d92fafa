"""`fxfusion calibrate` through typer's CliRunner: every bad input is one line and a non-zero exit."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from typer.testing import CliRunner

from fxfusion.cli.commands import app
from fxfusion.profiles.profile import Profile
from fxfusion.profiles.schema import schema_errors

runner = CliRunner()


def _run(*args):
    result = runner.invoke(app, ["calibrate", *args])
    return result, (result.stderr if result.stderr_bytes is not None else result.output)


@pytest.mark.parametrize("args,message", [
    (["--hardware", "no-such-box"], "unknown hardware 'no-such-box': known names are i7-12700K"),
    (["--hardware", "generic-cpu", "--patterns", "linear,transformers"], "unknown pattern or family 'transformers'"),
    (["--hardware", "generic-cpu", "--dtypes", "float32,int4"], "unknown dtype int4"),
    (["--hardware", "box", "--peak-gflops", "0", "--peak-bandwidth", "10"], "--peak-gflops must be a positive"),
    (["--hardware", "box", "--peak-gflops", "100", "--peak-bandwidth", "-1"], "--peak-bandwidth must be a positive"),
    (["--hardware", "box", "--peak-gflops", "100"], "pass both --peak-gflops and --peak-bandwidth"),
    (["--hardware", "generic-cpu", "--sizes", "huge"], "unknown size set 'huge'"),
    (["--hardware", "generic-cpu", "--device", "tpu"], "unknown device 'tpu'"),
    (["--hardware", "generic-cpu", "--threads", "0"], "--threads must be at least 1"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
    out = tmp_path / "p.json"
    result, err = _run(*args, "-o", str(out))
    assert result.exit_code == 1
    assert message in err and err.count("\n") == 1 and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path):
    result, err = _run("--hardware", "h100-sxm", "--device", "cuda", "-o", str(tmp_path / "p.json"))
    assert result.exit_code == 1 and "CUDA is not available" in err


def test_unwritable_output_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result, err = _run("--hardware", "generic-cpu", "--patterns", "linear_bias", "-o", str(blocker / "p.json"))
    assert result.exit_code == 1 and "cannot write" in err and "does not exist" in err


def test_ctrl_c_leaves_no_profile(tmp_path, monkeypatch):
    cal = importlib.import_module("fxfusion.calibration.calibrate")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cal, "measure_entry", interrupted)
    monkeypatch.setattr(cal, "measure_ceilings", lambda *a, **k: {"matmul": [], "bandwidth": [],
                                                                  "best_gflops": {}, "best_gbs": None})
    out = tmp_path / "p.json"
    result, err = _run("--hardware", "generic-cpu", "--patterns", "linear_bias", "-o", str(out))
    assert result.exit_code == 130 and "interrupted" in err
    assert not out.exists()


def test_resume_skips_finished_entries(tmp_path, monkeypatch):
    cal = importlib.import_module("fxfusion.calibration.calibrate")
    from tests.helpers import TINY_SPEC

    out = tmp_path / "p.json"
    real = cal.measure_entry
    calls = []

    def fail_on_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cal, "measure_entry", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        cal.calibrate("generic-cpu", patterns="linear_bias", quick=True, output=out, compile_modes=(),
                      spec=TINY_SPEC, skip_ceilings=True)
    assert not out.exists()
    progress = out.with_name(out.name + ".progress.jsonl")
    assert len(progress.read_text().splitlines()) == 2  # the run's settings, then the finished entry
    calls.clear()
    monkeypatch.setattr(cal, "measure_entry", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    profile = cal.calibrate("generic-cpu", patterns="linear_bias", quick=True, output=out, compile_modes=(),
                            spec=TINY_SPEC, skip_ceilings=True, resume=True)
    assert calls == [{"M": 512, "K": 1024, "N": 1024}]  # only the unfinished entry was measured again
    assert len(profile.entries) == 2 and out.exists() and not progress.exists()


@pytest.mark.slow
def test_quick_calibration_end_to_end_with_real_inductor(tmp_path):
    """One real `calibrate --quick` run, Inductor included, on one pattern: the file validates and says where."""
    out = tmp_path / "cpu.json"
    result = runner.invoke(app, ["calibrate", "--hardware", "generic-cpu", "--quick", "--patterns",
                                 "linear_bias_gelu", "--threads", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "linear_bias_gelu" in result.output and f"wrote {out}" in result.output
    data = json.loads(out.read_text())
    assert schema_errors(data, "profile") == []
    profile = Profile.load(out)
    assert profile.metadata["threads"] == 1 and profile.metadata["quick"] is True
    assert [e.shape for e in profile.entries] == [{"M": 64, "K": 256, "N": 256}, {"M": 512, "K": 1024, "N": 1024}]
    for e in profile.entries:
        compiled = e.variant("compile")
        assert compiled.status == "ok" and compiled.compile_s > 0 and compiled.rel_error <= compiled.tolerance
        assert e.variant("compile_reduce_overhead").status == "unsupported"
        assert e.decision.verdict in ("fuse", "neutral", "avoid")
    assert len(profile.ceilings["matmul"]) == 2 and len(profile.ceilings["bandwidth"]) == 2


# A damaged journal (cut-off line, wrong fields, bytes that are not text) and resuming under other settings:
# tests/test_calibrate_journal.py.
