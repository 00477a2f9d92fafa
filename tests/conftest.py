"""Shared fixtures.  Real measurements at tiny sizes: fast on a 2-core CPU, but produced by the real code paths."""

from __future__ import annotations

import pytest

from tests.helpers import TINY_SPEC


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
