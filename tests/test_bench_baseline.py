"""benchmarks/bench_baseline.py's tables from raw blocks (the timing itself needs the model and a second process)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_baseline", ROOT / "benchmarks" / "bench_baseline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _blocks(bench, per_source):
    """Two rounds; per source (eager ms, compile ms), three samples each."""
    return [{"round": r, "source": src, "samples_ms": {"eager": [e] * 3, "compile": [c] * 3}}
            for r in range(2) for src, (e, c) in per_source.items()]


def test_a_fresh_process_slower_in_absolute_terms_can_still_agree_on_compiles_gain(bench):
    # the fresh process 20% slower at both candidates: its absolute figures fail the check, the gain agrees
    blocks = _blocks(bench, {"fresh process": (2.4, 1.2), "fxfusion timing": (2.0, 1.0),
                             "fxfusion clock, plain blocks": (2.0, 1.0), "plain loop here": (2.0, 1.0)})
    main_rows, speedup = bench.rows("m.py", {"eager": 2.0, "compile": 1.0}, blocks)
    compile_row, eager_row = main_rows
    assert "| 0.833 | NO |" in compile_row and "| 0.833 | NO |" in eager_row
    assert speedup == "| m.py | 2.000 | 2.000 | 2.000 | 1.000 | yes |"


def test_a_handicapped_compile_figure_fails_both_checks(bench):
    # fxfusion's compile 30% slower than everyone else's: the gain it reports is too small
    blocks = _blocks(bench, {"fresh process": (2.0, 1.0), "fxfusion timing": (2.0, 1.3),
                             "fxfusion clock, plain blocks": (2.0, 1.0), "plain loop here": (2.0, 1.0)})
    main_rows, speedup = bench.rows("m.py", {"eager": None, "compile": None}, blocks)
    assert "| 1.300 | NO |" in main_rows[0] and "| 1.000 | yes |" in main_rows[1] and main_rows[0].count("| - |") == 1
    assert speedup.endswith("| 0.769 | NO |")
