"""The README and quick start can be followed as written: every profile an example reads ships with the project,
and whatever an example writes into a checkout is git-ignored (it does not show up as untracked)."""

from __future__ import annotations

import re
import shlex
import shutil
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "quickstart.md"]


def example_commands() -> list[list[str]]:
    """Every `fxfusion ...` line of the docs' bash blocks, continuations joined, comments dropped."""
    out = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("#", 1)[0].strip()
                if line.startswith("fxfusion "):
                    out.append(shlex.split(line)[1:])
    return out


def _written(args: list[str]) -> list[str]:
    """What a command writes: its -o/--output, else calibrate's profiles/HARDWARE.json, report's FILE.html."""
    for flag in ("-o", "--output"):
        if flag in args:
            return [args[args.index(flag) + 1]]
    if args[0] == "calibrate":
        return [f"profiles/{args[args.index('--hardware') + 1]}.json"]
    if args[0] == "report":
        return [str(Path(args[1]).with_suffix(".html"))]
    return []


def test_the_docs_have_examples():
    commands = example_commands()
    assert {c[0] for c in commands} >= {"calibrate", "analyze", "report", "compare", "validate"}


def test_every_profile_an_example_reads_ships_or_is_written_by_an_earlier_example():
    written = {w for c in example_commands() for w in _written(c)}
    for args in example_commands():
        outputs = set(_written(args))
        for arg in args:
            if arg.startswith("profiles/") and arg.endswith(".json") and arg not in outputs:
                assert (ROOT / arg).exists() or arg in written, f"{arg} (in: fxfusion {' '.join(args)})"


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_what_the_examples_write_into_a_checkout_is_ignored():
    for args in example_commands():
        for path in _written(args):
            if path.startswith("/") or "--resume" in args:  # a scratch path; resuming a shipped run on purpose
                continue
            ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0
            assert ignored, f"fxfusion {' '.join(args)} leaves {path} untracked in the checkout"


def _readme_block(language: str, containing: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return next(b for b in blocks if containing in b)


def test_the_zoo_install_keeps_the_installed_torch(tmp_path):
    """The README's zoo line pins torch with a constraint file holding the installed version (as .ci/run does), so
    pip cannot swap a CPU torch for a CUDA build; the lines run as written in a POSIX shell."""
    import torch

    block = _readme_block("bash", ".[dev,zoo]")
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]
    pin_line = next(line for line in lines if "torch.__version__" in line)
    install = next(line for line in lines if "pip install" in line and ".[dev,zoo]" in line)
    assert " -c " in install and lines.index(pin_line) < lines.index(install)
    subprocess.run(["sh", "-c", pin_line], check=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    pin = install.split(" -c ", 1)[1].strip().strip('"').replace("${TMPDIR:-/tmp}", str(tmp_path))
    assert Path(pin).read_text().strip() == f"torch=={torch.__version__}"


@pytest.mark.slow  # about 30-60 s on the 2-core CI machine (tests/conftest.py's suite budget)
def test_the_readme_library_example_runs_as_written_on_a_cpu(monkeypatch):
    """The README's python block, executed as it stands (from the checkout's root), with the calibration made
    fast: the tiny timing spec, no ceilings, no torch.compile variants.  It plans with the profile it has just
    calibrated, not with the H200's (which would be refused on a CPU)."""
    import fxfusion.calibration.calibrate as cal
    from tests.helpers import TINY_SPEC

    real_build = cal.build_variants
    monkeypatch.setattr(cal, "QUICK_SPEC", TINY_SPEC)
    monkeypatch.setattr(cal, "measure_ceilings", lambda *a, **k: {"matmul": [], "bandwidth": [], "best_gflops": {},
                                                                  "best_gbs": None})
    monkeypatch.setattr(cal, "build_variants", lambda *a: real_build(*a[:5], ()))
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(_readme_block("python", "fxfusion.calibrate("), "README.md", "exec"), scope)
    assert scope["profile"].metadata["device"] == "cpu" and scope["plan"] is not None
    assert isinstance(scope["results"], list) and scope["results"]
