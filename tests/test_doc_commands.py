"""Every command of README.md and docs/quickstart.md runs as written on a CPU (issue 27's first target): each
`fxfusion ...` line of their bash blocks, in order, in a scratch folder laid out as a checkout (models/ and the
shipped profiles/), through the real CLI, with only the timing knobs made quick (the tiny timing spec, no ceilings,
no torch.compile variants in calibration, quick --apply stages).  The GPU lines (--device cuda) and the lines about a
user's own file (my_model.py) are left out, by name.  What the README says a command writes is checked: the entry
counts of its table."""

from __future__ import annotations

import os
import shutil

import pytest
from typer.testing import CliRunner

from fxfusion.cli.commands import app
from fxfusion.profiles.profile import Profile
from tests.helpers import TINY_SPEC, quick_apply
from tests.test_docs_examples import ROOT, example_commands

runner = CliRunner()
# The README's table: `calibrate --hardware generic-cpu --quick` (98 entries), the my-box example (64 entries).
ENTRIES = {"profiles/generic-cpu.json": 98, "out.json": 64}


def _left_out(args: list[str]) -> str | None:
    if "cuda" in args:
        return "needs a GPU"
    if any("my_model.py" in a for a in args):
        return "a user's own model file"
    return None


@pytest.mark.slow
def test_every_cpu_command_of_the_docs_runs_as_written(tmp_path, monkeypatch):
    import fxfusion.calibration.calibrate as cal
    import fxfusion.planning.decide as decide

    real_build = cal.build_variants
    monkeypatch.setattr(cal, "QUICK_SPEC", TINY_SPEC)
    monkeypatch.setattr(cal, "measure_ceilings", lambda *a, **k: {"matmul": [], "bandwidth": [], "best_gflops": {},
                                                                  "best_gbs": None})
    monkeypatch.setattr(cal, "build_variants", lambda *a: real_build(*a[:5], ()))
    monkeypatch.setattr(decide.LiveSource.__init__, "__defaults__",
                        (TINY_SPEC,) + decide.LiveSource.__init__.__defaults__[1:])  # sites measured live, briefly
    quick_apply(monkeypatch)
    os.symlink(ROOT / "models", tmp_path / "models")
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    monkeypatch.chdir(tmp_path)
    ran, left = [], {}
    for args in example_commands():
        if (why := _left_out(args)) is not None:
            left[" ".join(args)] = why
            continue
        result = runner.invoke(app, args, env={"COLUMNS": "120"})
        assert result.exit_code == 0 and result.exception is None or isinstance(result.exception, SystemExit), (
            args, result.output[-2000:])
        assert "Traceback" not in result.output, (args, result.output[-2000:])
        ran.append(args[0])
    assert {"calibrate", "analyze", "report", "compare", "validate"} <= set(ran)
    assert len(ran) >= 10 and set(left.values()) <= {"needs a GPU", "a user's own model file"}
    for path, n in ENTRIES.items():  # what the README's table says these write
        assert len(Profile.load(tmp_path / path).entries) == n, path
