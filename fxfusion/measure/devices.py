"""Devices and dtypes, each read in one place.

A device travels as one ``torch.device`` from the CLI (or the library call) down to the clock: ``cuda`` is resolved
to the explicit index of the current GPU once (:func:`as_device`), so the clock records its events, flushes its L2
buffer and synchronises on the GPU the work runs on.  Profiles and reports store the device as a string; the helpers
here take either form.

A dtype is a :class:`DType` record: its name as profiles and reports write it, the torch dtype and its item size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fxfusion.errors import FxFusionError



def as_device(device: str | torch.device | None) -> torch.device:
    """The ``torch.device`` for ``device`` ("cpu", "cuda", "cuda:N"), CUDA ones with an explicit index; one clear
    line for anything else."""
    if device is None:
        return torch.device("cpu")
    try:
        d = device if isinstance(device, torch.device) else torch.device(str(device))
    except (RuntimeError, ValueError):
        raise FxFusionError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if d.type not in ("cpu", "cuda"):
        raise FxFusionError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return d


def kind(device: str | torch.device) -> str:
    """'cpu' or 'cuda': the device type, whatever form the device is in."""
    return device.type if isinstance(device, torch.device) else str(device).split(":")[0]


def is_cuda(device: str | torch.device | None) -> bool:
    return device is not None and kind(device) == "cuda"


def synchronize(device: str | torch.device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on the CPU)."""
    if is_cuda(device):
        torch.cuda.synchronize(as_device(device))


def check_available(device: str | torch.device) -> torch.device:
    """:func:`as_device`, and a clear line when CUDA (or that GPU index) is not on this machine."""
    d = as_device(device)
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise FxFusionError(f"--device {device} asked for, but CUDA is not available on this machine "
                                f"(torch {torch.__version__})")
        if d.index >= torch.cuda.device_count():
            raise FxFusionError(f"--device {device} asked for, but this machine has {torch.cuda.device_count()} "
                                "GPU(s)")
    return d


@dataclass(frozen=True)
class DType:
    name: str  # as profiles and reports write it: "bfloat16"
    torch: torch.dtype
    itemsize: int  # bytes per element


DTYPES: dict[str, DType] = {d.name: d for d in (
    DType("float32", torch.float32, 4), DType("bfloat16", torch.bfloat16, 2), DType("float16", torch.float16, 2),
    DType("float64", torch.float64, 8),
)}
_BY_TORCH = {d.torch: d for d in DTYPES.values()}


def dtype(name_or_dtype: str | torch.dtype) -> DType:
    """The record of a dtype given by name or as a torch dtype; one clear line for one the library does not use."""
    found = _BY_TORCH.get(name_or_dtype) if isinstance(name_or_dtype, torch.dtype) else DTYPES.get(name_or_dtype)
    if found is None:
        raise FxFusionError(f"unsupported dtype {name_or_dtype!r}; choose from {', '.join(DTYPES)}")
    return found


def dtype_name(t: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (any torch dtype, not only the library's)."""
    return str(t).replace("torch.", "")
