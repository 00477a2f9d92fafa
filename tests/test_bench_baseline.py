"""The baseline-fidelity check's statistics and tables from raw blocks (fxfusion.measure.fidelity,
fxfusion.reports.fidelity; benchmarks/bench_baseline.py times the blocks, which needs the model and a second
process)."""

from __future__ import annotations

import pytest

from fxfusion.measure import fidelity
from fxfusion.reports import fidelity as tables


def _blocks(per_source):
    """Two rounds; per source (eager ms, compile ms), three samples each."""
    return [{"round": r, "source": src, "samples_ms": {"eager": [e] * 3, "compile": [c] * 3}}
            for r in range(2) for src, (e, c) in per_source.items()]


def test_a_fresh_process_slower_in_absolute_terms_can_still_agree_on_compiles_gain():
    # the fresh process 20% slower at both candidates: its absolute figures fail the check, the gain agrees
    blocks = _blocks({"fresh process": (2.4, 1.2), "fxfusion timing": (2.0, 1.0),
                             "fxfusion clock, plain blocks": (2.0, 1.0), "plain loop here": (2.0, 1.0)})
    main_rows, speedup = tables.rows("m.py", {"eager": 2.0, "compile": 1.0}, blocks)
    compile_row, eager_row = main_rows
    assert "| 0.833 | 0.833 [0.833, 0.833] | NO |" in compile_row and "| 0.833 | 0.833" in eager_row
    assert speedup == "| m.py | 2.000 | 2.000 | 2.000 | 1.000 | 1.000 [1.000, 1.000] | yes |"


def test_a_handicapped_compile_figure_fails_both_checks():
    # fxfusion's compile 30% slower than everyone else's: the gain it reports is too small
    blocks = _blocks({"fresh process": (2.0, 1.0), "fxfusion timing": (2.0, 1.3),
                             "fxfusion clock, plain blocks": (2.0, 1.0), "plain loop here": (2.0, 1.0)})
    main_rows, speedup = tables.rows("m.py", {"eager": None, "compile": None}, blocks)
    assert "| 1.300 | 1.300 [1.300, 1.300] | NO |" in main_rows[0] and "| 1.000 [1.000, 1.000] | yes |" in main_rows[1]
    assert main_rows[0].count("| - |") == 1
    assert speedup.endswith("| 0.769 | 0.769 [0.769, 0.769] | NO |")


def test_a_host_that_switches_speed_between_rounds_moves_the_pooled_ratio_not_the_paired_one():
    # the host runs at 1x or 1.8x; in rounds 0 and 3 it switched between fxfusion's block and the fresh one
    speeds = [1.0, 1.0, 1.8, 1.0, 1.8]
    fresh_speeds = [1.8, 1.0, 1.8, 1.8, 1.8]
    blocks = []
    for r, (s, f) in enumerate(zip(speeds, fresh_speeds)):
        blocks.append({"round": r, "source": "fxfusion timing", "samples_ms": {"eager": [3.0 * s] * 3,
                                                                                "compile": [1.0 * s] * 3}})
        blocks.append({"round": r, "source": "fresh process", "samples_ms": {"eager": [3.0 * f] * 3,
                                                                              "compile": [1.0 * f] * 3}})
        for src in ("fxfusion clock, plain blocks", "plain loop here"):
            blocks.append({"round": r, "source": src, "samples_ms": {"eager": [3.0 * s] * 3, "compile": [1.0 * s] * 3}})
    paired = fidelity.paired_ratio(blocks, "eager")
    assert paired.median == pytest.approx(1.0) and paired.ci_low < 1.0  # two rounds of five straddled a switch
    main_rows, _ = tables.rows("m.py", {}, blocks)
    assert "| 0.556 | 1.000 [0.556, 1.000] | yes |" in main_rows[1]  # pooled medians: 1.0x against 1.8x
    assert fidelity.paired_ratio([b for b in blocks if b["source"] == "fresh process"], "eager") is None


def test_each_round_takes_the_compared_pair_next_to_each_other():
    import random

    rng = random.Random(1)
    for _ in range(50):
        order = fidelity.adjacent_pair_order(rng)
        assert sorted(order) == sorted(fidelity.SOURCES)
        i, j = order.index("fresh process"), order.index("fxfusion timing")
        assert abs(i - j) == 1


def test_pin_reads_a_cpu_list():
    assert fidelity.cpulist("3") == {3} and fidelity.cpulist("2-4,7") == {2, 3, 4, 7}


def test_every_configuration_timed_gets_its_rows_and_its_gain_over_eager():
    # fxfusion's freezing figure 10% slow against the fresh process's, its default compile right
    blocks = [{"round": r, "source": src, "samples_ms": {"eager": [2.0] * 3, "compile": [1.0] * 3,
                                                          "compile+freezing": [f] * 3}}
              for r in range(2) for src, f in (("fresh process", 0.8), ("fxfusion timing", 0.88),
                                               ("fxfusion clock, plain blocks", 0.8), ("plain loop here", 0.8))]
    main_rows, speedup = tables.rows("m.py", {"eager": 2.0, "compile": 1.0, "compile+freezing": None}, blocks)
    assert [r.split(" | ")[1] for r in main_rows] == ["compile", "compile+freezing", "eager"]
    assert "| 1.100 | 1.100 [1.100, 1.100] | NO |" in main_rows[1] and "| yes |" in main_rows[0]
    compile_gain, freezing_gain = speedup.splitlines()
    assert compile_gain.startswith("| m.py | 2.000 |") and compile_gain.endswith("| yes |")
    assert freezing_gain.startswith("| m.py (compile+freezing) | 2.273 |") and freezing_gain.endswith("| NO |")
    assert fidelity.paired_ratio(blocks, None, "compile+freezing").median == pytest.approx(0.8 / 0.88)
