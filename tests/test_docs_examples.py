"""The README and quick start can be followed as written: every profile an example reads ships with the project,
and whatever an example writes into a checkout is git-ignored (it does not show up as untracked)."""

from __future__ import annotations

import re
import shlex
import shutil
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
