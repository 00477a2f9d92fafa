"""Shared fixtures.  Real measurements at tiny sizes: fast on a 2-core CPU, but produced by the real code paths."""

from __future__ import annotations

import pytest
import torch

from fxfusion.timing import TimingSpec

# Enough rounds for a bootstrap interval, little enough to keep the suite fast.
TINY_SPEC = TimingSpec(rounds=6, warmup=1, target_sample_s=0.0005, budget_s=0.5)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="session")
def tiny_profile(tmp_path_factory):
    """A real calibration profile (written to disk and loaded back) of a few patterns at the quick sizes, no compile.

    Returns the path of the written profile.
    """
    from fxfusion.calibrate import calibrate

    path = tmp_path_factory.mktemp("profiles") / "tiny.json"
    calibrate(hardware="generic-cpu", device="cpu", patterns="linear_bias_relu,conv2d_bn_relu,full_attention",
              quick=True, output=path, compile_modes=(), spec=TINY_SPEC, command="pytest tiny_profile")
    return path
