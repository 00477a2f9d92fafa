"""Which definition differs where a profile and the plain loop disagree (fxfusion.reports.regimes_check.attribute):
synthetic disagreements whose cause is known -- a layout conversion one side leaves out, weights one side prepares
in every call -- re-timed by the probe's own loop under a timer that charges each call what it does, and the rules
read off the numbers alone (the first call counted in a probe batch, the same factor as eager, the eager
baseline), as a --from-json re-analysis of a committed run applies them."""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch

from fxfusion.measure.probe import FIRST_CALL, INPUT_CONVERTED_ONCE, WEIGHTS_PER_CALL
from fxfusion.reports import regimes_check as check

US = 1e-6


class Ledger:
    """What the fake variants spend: each adds its cost in seconds; the timer reads the ledger, not a clock."""

    def __init__(self):
        self.spent = 0.0

    def batch(self, fn, n, first_untimed=False):  # the probe's BatchTimer protocol
        if first_untimed:
            fn()
        before = self.spent
        for _ in range(n):
            fn()
        return (self.spent - before) / n


def _entry(pipelined_ms: dict, verdicts: dict, isolated_ms: dict | None = None):
    """A profile entry as entry_cells reads it: per variant its pipelined median, speedup and verdict."""
    variants = []
    for name, ms in pipelined_ms.items():
        sp = pipelined_ms["eager"] / ms
        pipelined = SimpleNamespace(median_ms=ms, verdict=verdicts.get(name),
                                    speedup=None if name == "eager" else SimpleNamespace(median=sp))
        variants.append(SimpleNamespace(name=name, kind="eager" if name == "eager" else "manual", status="ok",
                                        pipelined=pipelined, median_ms=(isolated_ms or pipelined_ms)[name]))
    return SimpleNamespace(variants=variants, key=lambda: "synthetic[B=1]:float32@cpu")


def _probe_ms(ledger, thunks):
    return {name: check.probe(fn, ledger, reps=3, warmup=1) * 1e3 for name, fn in thunks.items()}


def test_a_disagreement_from_a_per_call_layout_conversion_is_attributed_to_layout_conversion():
    """The variant converts its NCHW input to channels-last in every call (4 us) before its 6 us of work; eager
    costs 10 us.  The profile's figure (6 us, fuse 1.67x) is the variant fed an input already in channels-last; the
    loop times it as defined (10 us).  Re-timed with the conversion moved out, it agrees: layout conversion."""
    ledger = Ledger()
    x = torch.randn(1, 2, 3, 3)

    def build(inputs):
        xi = inputs["x"]

        def run():
            if not xi.is_contiguous(memory_format=torch.channels_last):
                ledger.spent += 4 * US
            ledger.spent += 6 * US
            return xi.contiguous(memory_format=torch.channels_last)

        return run

    def eager():
        ledger.spent += 10 * US
        return x * 1.0

    thunks = {"eager": eager, "channels_last": build({"x": x})}
    cells = check.entry_cells(_entry({"eager": 0.010, "channels_last": 0.006}, {"channels_last": "fuse"}),
                              _probe_ms(ledger, thunks))
    cl = cells[1]
    assert cl.disagrees and not cl.within and cl.probe_ms == pytest.approx(0.010)
    got = check.redefine(cells, thunks, {"channels_last": build}, {"x": x}, ledger)
    assert got["channels_last"][INPUT_CONVERTED_ONCE]["ms"] == pytest.approx(0.006)
    assert got["channels_last"][WEIGHTS_PER_CALL]["ms"] == pytest.approx(0.010)  # nothing to prepare: no change
    assert cl.differs_in == ["layout conversion"]
    assert cells[0].differs_in is None and "eager" not in got  # eager agrees: not re-timed
    assert check.summary(cells)["causes"] == {"layout conversion": 1}


def test_a_disagreement_from_weights_prepared_per_call_is_attributed_to_weight_preparation():
    """The variant's build folds BatchNorm into the weights (5 us, once, at load) and each call then costs 6 us;
    eager costs 9 us.  The profile says avoid 0.82x: it was measured with the fold in every call (11 us); the loop
    times the variant as defined (6 us, 1.5x faster than eager).  Median and direction both disagree; re-timed with
    the weights prepared per call, both agree: weight preparation."""
    ledger = Ledger()
    x = torch.randn(4, 4)

    def build(inputs):
        ledger.spent += 5 * US  # the fold

        def run():
            ledger.spent += 6 * US
            return inputs["x"] * 2.0

        return run

    def eager():
        ledger.spent += 9 * US
        return x * 2.0

    thunks = {"eager": eager, "bn_folded": build({"x": x})}
    cells = check.entry_cells(_entry({"eager": 0.009, "bn_folded": 0.011}, {"bn_folded": "avoid"}),
                              _probe_ms(ledger, thunks))
    folded = cells[1]
    assert folded.direction == "disagree" and not folded.within
    got = check.redefine(cells, thunks, {"bn_folded": build}, {"x": x}, ledger)
    assert set(got["bn_folded"]) == {WEIGHTS_PER_CALL, FIRST_CALL}  # a 2-d output: no layout to move
    assert got["bn_folded"][WEIGHTS_PER_CALL]["ms"] == pytest.approx(0.011)
    assert folded.differs_in == ["weight preparation"]


def _cell(variant, pipelined, probe, isolated=None, speedup=None, probe_speedup=None, verdict=None):
    c = check.Cell("k", variant, pipelined, isolated or pipelined, probe, check._within(pipelined, probe),
                   check._within(isolated or pipelined, probe), speedup, verdict, probe_speedup)
    if probe_speedup is not None:
        c.direction = check._direction_of(speedup, verdict, probe_speedup)
    return c


def test_an_entry_off_by_one_factor_is_the_same_factor_as_eager_not_a_definition():
    """Every variant, eager included, 1.6x slower in the calibration than in the loop: the medians miss, the
    speedup agrees (the H100's conv2d_bn_relu 4x128x28x28 float32 read 1.50-1.79 on all five variants)."""
    cells = [_cell("eager", 0.080, 0.050), _cell("bn_folded", 0.064, 0.040, speedup=1.25, probe_speedup=1.25,
                                                 verdict="fuse")]
    check.attribute_cells(cells)
    assert [c.differs_in for c in cells] == [[check.SAME_FACTOR], [check.SAME_FACTOR]]


def test_a_speedup_that_moves_with_eager_alone_is_the_eager_baseline():
    cells = [_cell("eager", 0.080, 0.050), _cell("compile", 0.060, 0.058, speedup=1.33, probe_speedup=0.86,
                                                 verdict="fuse")]
    check.attribute_cells(cells)
    assert cells[1].differs_in == [check.EAGER_BASELINE]


def test_the_first_call_of_a_short_probe_batch_explains_a_direction_miss():
    """A 0.2 ms compiled GEMM whose lone call costs 0.38 ms: the probe's 2 ms batches hold 6 calls, the first a lone
    one, which the pipelined median leaves out -- enough to turn neutral 1.00x into 0.86x (the H100's bfloat16
    sibling_gemm2 at M=2048).  The same cell with a cheap first call stays unattributed."""
    eager = _cell("eager", 0.1935, 0.1834, isolated=0.21)
    slow_first = _cell("compile", 0.1935, 0.2132, isolated=0.378, speedup=1.004, probe_speedup=0.86, verdict="neutral")
    check.attribute_cells([eager, slow_first])
    assert slow_first.differs_in == ["first call"]
    cheap_first = _cell("compile", 0.1935, 0.2132, isolated=0.2, speedup=1.004, probe_speedup=0.86, verdict="neutral")
    check.attribute_cells([eager, cheap_first])
    assert cheap_first.differs_in == [check.UNATTRIBUTED]
    # re-timed on the card with the first calls left out and still 0.86x: the card's answer stands, not the reading
    slow_first.redefined = {FIRST_CALL: {"ms": 0.2132, "eager_ms": 0.1834}}
    check.attribute_cells([eager, slow_first])
    assert slow_first.differs_in == [check.UNATTRIBUTED]


def test_re_timings_taken_while_the_machine_changed_speed_are_not_read():
    """Eager, probed again beside the re-timed definitions, reads twice its first probe (a loaded machine): a
    definition that happens to match is not named, the cell says the machine moved (this 2-core CPU under load
    matched a 44 ms bn_folded with its 40 ms fold-per-call re-timing, 2026-12-07)."""
    cells = [_cell("eager", 0.010, 0.010), _cell("bn_folded", 0.011, 0.006, speedup=0.82, probe_speedup=1.67,
                                                 verdict="avoid")]
    cells[1].redefined = {WEIGHTS_PER_CALL: {"ms": 0.011, "eager_ms": 0.020, "eager_again_ms": 0.020}}
    check.attribute_cells(cells)
    assert cells[1].differs_in == [check.UNSTEADY]
    cells[1].redefined[WEIGHTS_PER_CALL].update(eager_ms=0.0095, eager_again_ms=0.0095)  # steady: read
    check.attribute_cells(cells)
    assert cells[1].differs_in == ["weight preparation"]


def test_a_borderline_miss_nudged_inside_the_band_is_not_explained():
    """Counting the first call moves 0.797 to 0.836 of the probe -- inside +-20% but less than half the gap
    closed: not the cause."""
    c = _cell("eager", 0.0369, 0.0463, isolated=0.0817)
    check.attribute_cells([c])
    assert c.differs_in == [check.UNATTRIBUTED]


def test_from_json_reattributes_a_committed_run_without_timing(tmp_path, capsys):
    """Old cells.json files (no re-timed definitions, no causes) are read, gzipped or not, and attributed."""
    cells = [_cell("eager", 0.080, 0.050), _cell("bn_folded", 0.064, 0.040, speedup=1.25, probe_speedup=1.25,
                                                 verdict="fuse"), _cell("compile", 0.05, 0.051, speedup=1.6,
                                                                        probe_speedup=0.98, verdict="fuse")]
    old = [{k: v for k, v in asdict(c).items() if k not in ("redefined", "differs_in")} for c in cells]
    with gzip.open(tmp_path / "cells.json.gz", "wt") as f:
        json.dump({"summary": {}, "cells": old}, f)
    again = check.read_cells(tmp_path)
    assert [c.differs_in for c in again] == [[check.SAME_FACTOR], [check.SAME_FACTOR], None]
    assert check.run(["--from-json", str(tmp_path / "cells.json.gz")]) == 0
    out = capsys.readouterr().out
    assert "disagreeing cells: 2; differs in: same factor as eager 2" in out and "bn_folded" in out
    assert "compile" not in out.split("disagreeing cells")[0]  # only the disagreeing cells are listed


def test_a_disagreement_from_the_first_call_of_each_batch_is_attributed_to_the_first_call():
    """A call that costs 40 us more when the device was idle before it (the first of a batch), 10 us after: the
    pipelined regime leaves each batch's first call out (10 us), a probe of 2 ms batches sized from a 50 us lone call
    (40 calls) counts it.  With 1-call batches the probe reads 50 us; re-timed with the first call left out, 10 us."""
    ledger = Ledger()
    ledger.fresh = False

    def variant():
        ledger.spent += (50 if ledger.fresh else 10) * US
        ledger.fresh = False

    def batch(fn, n, first_untimed=False):
        ledger.fresh = True
        return Ledger.batch(ledger, fn, n, first_untimed)

    ledger.batch = batch
    def eager():
        ledger.spent += 10 * US
        ledger.fresh = False

    thunks = {"eager": eager, "slow_start": variant}
    probes = {"eager": 0.010, "slow_start": check.probe(variant, ledger, reps=3, warmup=1, batch_s=50 * US) * 1e3}
    assert probes["slow_start"] == pytest.approx(0.050)
    cells = check.entry_cells(_entry({"eager": 0.010, "slow_start": 0.010}, {}), probes)
    got = check.redefine(cells, thunks, {}, None, ledger)
    assert got["slow_start"][FIRST_CALL]["ms"] == pytest.approx(0.010)
    assert cells[1].differs_in == ["first call"]


def test_a_shipped_profile_is_checked_as_it_is_on_this_cpu(tiny_profile, tmp_path, monkeypatch):
    """--profile: the profile's entries' variants built again here, probed, every cell re-timed (--definitions all),
    the table, the re-timings and the summary written; nothing calibrated.  (Short probes: the real loop, fewer
    and shorter batches.)"""
    from fxfusion.measure import probe as probe_module

    plain = probe_module.probe

    def short(fn, timer, reps=3, batch_s=2e-4, warmup=1, first_untimed=False):
        return plain(fn, timer, reps=3, batch_s=2e-4, warmup=1, first_untimed=first_untimed)

    monkeypatch.setattr(probe_module, "probe", short)
    monkeypatch.setattr(check, "probe", short)
    out = tmp_path / "check"
    assert check.run(["--out", str(out), "--device", "cpu", "--profile", str(tiny_profile), "--patterns",
                      "conv2d_bn_relu", "--sizes", "1", "--no-compile", "--definitions", "all"]) == 0
    text = (out / "bench_regimes.txt").read_text()
    assert "checking" in text and "conv2d_bn_relu[B=1,Cin=16" in text and not (out / "profile_regimes.json").exists()
    cells = json.loads((out / "cells.json").read_text())["cells"]
    assert {c["variant"] for c in cells} == {"eager", "bn_folded", "conv_relu_fused"}
    folded = next(c for c in cells if c["variant"] == "bn_folded")
    assert set(folded["redefined"]) == {WEIGHTS_PER_CALL, FIRST_CALL}
    assert all(c["differs_in"] is None or c["differs_in"] for c in cells)

    import fxfusion.calibration.variants as variants

    def no_build(*args, **kwargs):
        raise AssertionError("a resumed check builds no entry it has probed")

    monkeypatch.setattr(variants, "build_variants", no_build)
    assert check.run(["--out", str(out), "--device", "cpu", "--profile", str(tiny_profile), "--patterns",
                      "conv2d_bn_relu", "--sizes", "1", "--no-compile", "--resume"]) == 0
    assert json.loads((out / "cells.json").read_text())["cells"] == cells  # the same probes, read back
