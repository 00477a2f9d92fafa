"""benchmarks/bench_dynamic.py: its default ranges follow the preset's batch and token length within the model's
positions (its clock counter is the library's timing.SampleCount, tested in test_saved_apply)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch


BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_dynamic.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_dynamic", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_dynamic"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_dynamic", None)


class _Config:
    max_position_embeddings = 48


class _LM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config = _Config()


def test_default_ranges_follow_the_preset_and_the_position_limit(bench):
    tokens = torch.zeros(8, 128, dtype=torch.long)
    assert bench.default_ranges(_LM(), (tokens,)) == "batch=1:8,seq=12:48"
    assert bench.default_ranges(torch.nn.Linear(2, 2), (torch.zeros(2, 3, 4, 4),)) == "batch=1:4"
