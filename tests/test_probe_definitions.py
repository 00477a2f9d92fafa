"""The probe's own loop and the other definitions it re-times a variant under (fxfusion.measure.probe): a plain
loop that shares no timing code with fxfusion, and each re-definition built from the variant's own ``build`` --
weights prepared per call, the layout conversion moved out, the output converted back -- computing what the variant
computes.  Real conv+BN variants at a tiny shape on the CPU."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from fxfusion.fusions.registry import REGISTRY
from fxfusion.measure import probe as probe_module
from fxfusion.measure.probe import (FIRST_CALL, INPUT_CONVERTED_ONCE, OUTPUT_CONVERTED_BACK, WEIGHTS_AND_OUTPUT,
                                    WEIGHTS_PER_CALL, changes_layout, first_call_counted, redefinitions, retime)

SHAPE = dict(B=2, Cin=4, Cout=4, H=5, W=5, k=3, G=1)


def _conv_bn_relu():
    pattern = REGISTRY["conv2d_bn_relu"]
    inputs = pattern.make_inputs(SHAPE, torch.float32, "cpu", torch.Generator().manual_seed(0))
    return pattern, inputs


def test_the_probe_is_a_plain_loop_that_imports_no_fxfusion_code():
    """Where the probe and the pipelined regime agree, the agreement must not be fxfusion's clock agreeing with
    itself: the probe module imports only the standard library (torch lazily, for CUDA events and layouts)."""
    tree = ast.parse(Path(probe_module.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module}
    assert imported <= {"__future__", "math", "statistics", "time", "typing", "torch"}
    module_level = {alias.name for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names}
    assert "torch" not in module_level  # a --from-json re-analysis needs no torch


def test_a_folded_variant_is_redefined_with_its_weights_prepared_per_call_and_computes_the_same():
    pattern, inputs = _conv_bn_relu()
    mv = pattern.variant("bn_folded")
    built_calls = []

    def build(i):
        built_calls.append(1)
        return mv.build(i)

    thunk = mv.build(inputs)
    alternatives = redefinitions(build, inputs, thunk)
    assert set(alternatives) == {WEIGHTS_PER_CALL}  # NCHW in, NCHW out: no layout to move
    calls_before = len(built_calls)
    out = alternatives[WEIGHTS_PER_CALL]()
    assert len(built_calls) == calls_before + 1  # the fold runs inside the call
    torch.testing.assert_close(out, thunk())


def test_a_channels_last_variant_is_redefined_with_its_conversion_moved_out_or_its_output_converted_back():
    """channels_last (offered on CUDA only, but its build is plain torch) converts its NCHW input per call and hands
    back a channels-last output: each re-definition computes the same values, the output-back ones in NCHW."""
    pattern, inputs = _conv_bn_relu()
    mv = pattern.variant("channels_last")
    thunk = mv.build(inputs)
    assert changes_layout(thunk(), inputs["x"]) and not changes_layout(pattern.eager(**inputs), inputs["x"])
    alternatives = redefinitions(mv.build, inputs, thunk)
    assert set(alternatives) == {WEIGHTS_PER_CALL, INPUT_CONVERTED_ONCE, OUTPUT_CONVERTED_BACK, WEIGHTS_AND_OUTPUT}
    expected = pattern.eager(**inputs)
    for name, fn in alternatives.items():
        out = fn()
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
        assert out.is_contiguous() == (name in (OUTPUT_CONVERTED_BACK, WEIGHTS_AND_OUTPUT)), name
    assert inputs["x"].is_contiguous()  # the entry's own input is left as it was


def test_eager_and_compile_variants_have_no_build_so_only_the_first_call_is_redefined():
    pattern, inputs = _conv_bn_relu()

    class Timer:
        """A batch's first call costs 30 us (from an idle device), the others 10 us each."""

        def batch(self, fn, n, first_untimed=False):
            fn()
            return (10e-6 * n + (0 if first_untimed else 20e-6)) / n

    thunks = {"eager": lambda: pattern.eager(**inputs), "bn_folded": pattern.variant("bn_folded").build(inputs)}
    got = retime(["eager", "bn_folded"], thunks, {"bn_folded": pattern.variant("bn_folded").build}, inputs, Timer())
    assert set(got["eager"]) == {FIRST_CALL} and set(got["bn_folded"]) == {WEIGHTS_PER_CALL, FIRST_CALL}
    as_defined = 0.01 + 0.02 / 67  # a 2 ms batch sized from a 30 us lone call: 67 calls, the first 20 us dearer
    assert got["eager"][FIRST_CALL] == {"ms": pytest.approx(0.01), "eager_ms": pytest.approx(0.01),
                                        "eager_again_ms": pytest.approx(as_defined)}
    assert got["bn_folded"][WEIGHTS_PER_CALL]["eager_ms"] == pytest.approx(as_defined)


def test_a_redefinition_that_fails_is_reported_not_raised():
    pattern, inputs = _conv_bn_relu()

    def broken(i):
        raise RuntimeError("cannot fold here")

    class Timer:
        def batch(self, fn, n, first_untimed=False):
            fn()
            return 1e-5

    got = retime(["bn_folded"], {"eager": lambda: None, "bn_folded": lambda: None}, {"bn_folded": broken}, inputs,
                 Timer())
    assert "cannot fold here" in got["bn_folded"][WEIGHTS_PER_CALL]["error"]
    assert "ms" in got["bn_folded"][FIRST_CALL]


def test_the_probe_can_leave_each_batchs_first_call_out_as_the_pipelined_regime_does():
    calls = []

    class Timer:
        def batch(self, fn, n, first_untimed=False):
            calls.append((n, first_untimed))
            return 1e-4

    probe_module.probe(lambda: None, Timer(), reps=2, batch_s=1e-3, warmup=0, first_untimed=True)
    assert calls == [(1, False)] * 3 + [(9, True)] * 2  # sized from lone calls: 10 per batch, the first untimed


def test_the_first_call_counted_in_a_batch_weighs_more_the_longer_the_call():
    # 2 ms batches: a 0.05 ms lone call -> 40 calls, the first one barely counts; a 1 ms one -> 2 calls, half
    assert first_call_counted(0.05, 0.02) == pytest.approx((39 * 0.02 + 0.05) / 40)
    assert first_call_counted(1.0, 0.5) == pytest.approx(0.75)
    assert first_call_counted(3.0, 0.5) == 3.0  # a batch of one call is that call
