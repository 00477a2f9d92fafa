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
