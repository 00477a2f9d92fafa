"""Profiler sessions must not slow down what the process times afterwards (measure/profiling.py)."""

from __future__ import annotations

import os

import pytest
import torch

from fxfusion.measure import profiling
from fxfusion.measure.kernelcount import count_launches


@pytest.fixture
def fresh_state(monkeypatch):
    monkeypatch.setattr(profiling, "_state", {"cuda_sessions": 0, "attached": False})
    monkeypatch.delenv(profiling.TEARDOWN, raising=False)


def test_a_cpu_session_leaves_the_cupti_setting_alone(fresh_state):
    count_launches(lambda: torch.randn(8, 8) @ torch.randn(8, 8), "cpu")
    assert profiling.TEARDOWN not in os.environ
    assert not profiling.cupti_left_attached() and profiling.cupti_warning() is None


def test_the_warning_names_the_setting_that_kept_cupti_attached(fresh_state, monkeypatch):
    monkeypatch.setenv(profiling.TEARDOWN, "0")  # what torch sets when it compiles with CUDA graphs
    monkeypatch.setitem(profiling._state, "attached", True)
    line = profiling.cupti_warning()
    assert "TEARDOWN_CUPTI=0" in line and "slower" in line and "\n" not in line


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_session_asks_kineto_to_detach_cupti(fresh_state):
    x = torch.randn(64, 64, device="cuda")
    count = count_launches(lambda: x @ x, "cuda")
    assert count.kernels_per_call >= 1
    assert os.environ[profiling.TEARDOWN] == "1"
    assert profiling._state["cuda_sessions"] == 1 and not profiling.cupti_left_attached()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_session_that_keeps_cupti_attached_is_reported(fresh_state, monkeypatch):
    monkeypatch.setenv(profiling.TEARDOWN, "0")
    x = torch.randn(64, 64, device="cuda")
    count_launches(lambda: x @ x, "cuda")
    assert profiling.cupti_left_attached() and "TEARDOWN_CUPTI=0" in profiling.cupti_warning()


class _Event:  # what count_launches reads of a profiler event
    def __init__(self, name, cuda):
        self.name = name
        self.device_type = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
        self.time_range = type("Range", (), {"start": 0, "end": 10})()


def _sessions(monkeypatch, recorded: list[list]):
    """count_launches on 'cuda' without a GPU: each profiler session returns the next list of events."""
    from contextlib import contextmanager
    from fxfusion.measure import kernelcount

    sessions = iter(recorded)

    @contextmanager
    def fake(cuda):
        events = next(sessions)
        yield type("Prof", (), {"events": lambda self: events})()

    monkeypatch.setattr(kernelcount, "profiled", fake)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    return sessions


def test_a_cuda_session_that_recorded_no_kernel_is_repeated(monkeypatch):
    kernel = [_Event("aten::mm", False)] + [_Event("nvjet_gemm", True)] * 5
    left = _sessions(monkeypatch, [[_Event("aten::mm", False)], kernel, [_Event("unused", True)]])
    count = count_launches(lambda: None, "cuda")
    assert count.kernels_per_call == 1 and count.names == ("nvjet_gemm",) and count.unit == "cuda kernels"
    assert [e.name for e in next(left)] == ["unused"]  # the second session counted; no third was opened


def test_a_cuda_count_that_stays_empty_is_refused_not_zero(monkeypatch):
    from fxfusion.calibration.calibrate import _not_a_fusion
    from fxfusion.measure.kernelcount import EMPTY_RETRIES

    _sessions(monkeypatch, [[_Event("aten::mm", False)]] * (EMPTY_RETRIES + 1))
    with pytest.raises(RuntimeError, match="no CUDA kernel"):
        count_launches(lambda: None, "cuda")
    # the calibration keeps no eager count then, so the merged variant is not refused as "not a fusion" on it
    merged = type("Built", (), {"kind": "manual", "status": "ok"})()
    one = type("LaunchCount", (), {"kernels_per_call": 1.0, "names": ("nvjet_gemm",), "unit": "cuda kernels"})()
    assert _not_a_fusion(merged, one, None) is None
