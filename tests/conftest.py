"""Shared fixtures.  Real measurements at tiny sizes: fast on a 2-core CPU, but produced by the real code paths."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import TINY_SPEC, quick_apply


@pytest.fixture(scope="session")
def tiny_profile(tmp_path_factory):
    """A real calibration profile (written to disk and loaded back) of a few patterns at the quick sizes, no compile.

    Returns the path of the written profile.
    """
    from fxfusion.calibration.calibrate import calibrate

    path = tmp_path_factory.mktemp("profiles") / "tiny.json"
    calibrate(hardware="generic-cpu", device="cpu", patterns="linear_bias_relu,conv2d_bn_relu,full_attention",
              quick=True, output=path, compile_modes=(), spec=TINY_SPEC, command="pytest tiny_profile")
    return path


@pytest.fixture
def fast_planning_specs(monkeypatch):
    """`analyze --apply` through the CLI with the stages a test runs but does not test made quick: the one place the
    CLI's and the zoo's tests set these knobs.  The CLI's Planner (fxfusion.planning.pipeline.Planner, built in
    fxfusion.cli.analyze and handed to fxfusion.cli.analyze.apply_and_verify) gets, through tests/helpers.py's
    quick_apply, ``specs.verify`` and ``specs.context`` (fxfusion.planning.pipeline.Specs) = TINY_SPEC, in place of
    fxfusion.planning.verify.VERIFY_SPEC (30 rounds of 50 ms) and fxfusion.planning.incontext.CONTEXT_SPEC (20
    rounds of 20 ms, up to 3 batches: minutes on a busy 2-core machine), and ``candidates`` =
    CandidateSet.uncompiled() (no torch.compile).  Each stage still runs its real code on its real clock; the stages'
    own tests (tests/test_verify.py, tests/test_incontext.py) time them with specs of their own.  Returns the quick
    apply_and_verify (a spy can wrap it)."""
    return quick_apply(monkeypatch)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (restored after): a module uses it from an ``autouse`` fixture of its own
    where its timings or numerics must not depend on the machine's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def folding_profile(tiny_profile, tmp_path):
    """The tiny profile with conv2d_bn_relu decided fuse by folding BN: a plan that rewrites, decided without timing."""
    from fxfusion.profiles.profile import Profile

    profile = Profile.load(tiny_profile)
    for e in profile.entries:
        if e.pattern == "conv2d_bn_relu":
            for d in (e.decision, e.pipelined_decision):  # both regimes: analyze decides in the pipelined one
                d.verdict, d.best_variant, d.noisy = "fuse", "bn_folded", False
    return profile.save(tmp_path / "folding.json")
