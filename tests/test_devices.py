"""Devices and dtypes are read in one place (fxfusion.measure.devices): the forms they come in, and clear errors."""

from __future__ import annotations

import pytest
import torch

from fxfusion.errors import FxFusionError
from fxfusion.measure import devices
from fxfusion.measure.timing import CpuClock, clock_for


@pytest.mark.parametrize("given,want", [("cpu", "cpu"), (torch.device("cpu"), "cpu"), ("cuda:1", "cuda:1"),
                                        (torch.device("cuda", 2), "cuda:2")])
def test_devices_keep_their_index(given, want):
    assert str(devices.as_device(given)) == want


def test_a_bare_cuda_gets_an_explicit_index():
    assert devices.as_device("cuda").index is not None


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "mps:0"])
def test_unknown_devices_are_one_line_errors(bad):
    with pytest.raises(FxFusionError, match="use cpu, cuda or cuda:N"):
        devices.as_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_a_clear_error():
    with pytest.raises(FxFusionError, match="CUDA is not available"):
        devices.check_available("cuda:1")


def test_kind_reads_every_form():
    assert [devices.kind(d) for d in ("cpu", "cuda", "cuda:3", torch.device("cuda", 1))] == ["cpu", "cuda", "cuda",
                                                                                             "cuda"]
    assert devices.is_cuda("cuda:0") and not devices.is_cuda("cpu") and not devices.is_cuda(None)


def test_the_cpu_clock_for_any_cpu_form():
    assert isinstance(clock_for("cpu"), CpuClock) and isinstance(clock_for(torch.device("cpu")), CpuClock)


@pytest.mark.parametrize("name,itemsize", [("float32", 4), ("bfloat16", 2), ("float16", 2), ("float64", 8)])
def test_one_dtype_record(name, itemsize):
    d = devices.dtype(name)
    assert d.itemsize == itemsize == torch.empty((), dtype=d.torch).element_size()
    assert devices.dtype(d.torch) is d and devices.dtype_name(d.torch) == name


def test_an_unknown_dtype_is_an_error_not_a_default_itemsize():
    with pytest.raises(FxFusionError, match="unsupported dtype"):
        devices.dtype("int8")
