"""Hardware registry: name -> theoretical peaks, each with the source of its figures.

Peaks are dense (no sparsity) rates.  For float32 on NVIDIA GPUs the registry gives both the FP32 CUDA-core rate and
the TF32 tensor-core rate; which one applies depends on torch.backends.*.allow_tf32, recorded in every profile.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field

import torch

from fxfusion.errors import FxFusionError
from fxfusion.measure.devices import is_cuda, kind as device_kind


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    device: str  # "cpu" or "cuda"
    peak_gflops: dict[str, float]  # dtype name ("float32", "tf32", "bfloat16", "float16") -> GFLOP/s
    peak_bandwidth_gbs: float
    source: str
    match: tuple[str, ...] = field(default=())  # substrings of the device name this entry describes

    def peak_for(self, dtype: str, tf32: bool = False) -> float:
        if dtype == "float32" and tf32 and "tf32" in self.peak_gflops:
            return self.peak_gflops["tf32"]
        return self.peak_gflops.get(dtype) or self.peak_gflops["float32"]


def nominal_peaks(source: str) -> bool:
    """Whether peaks with this ``source`` are nominal placeholders (``generic-cpu``, an unregistered GPU) rather
    than a datasheet or the user's figures: then a percentage of them means nothing."""
    return str(source).startswith("nominal")


_NV = "NVIDIA {} datasheet (dense tensor-core rates, SXM form factor)"
REGISTRY: dict[str, HardwareSpec] = {
    spec.name: spec
    for spec in (
        HardwareSpec("i7-12700K", "cpu",
                     {"float32": 1400.0, "bfloat16": 1400.0, "float64": 700.0}, 76.8,
                     "Intel ARK: DDR5-4800 dual channel, 76.8 GB/s; FP32 derived as 8 P-cores x 4.7 GHz x 32 "
                     "FLOP/cycle (AVX2, 2 FMA) + 4 E-cores x 3.6 GHz x 16 (no AMX/AVX-512 bf16 on Alder Lake)",
                     ("12700K",)),
        HardwareSpec("h100-sxm", "cuda",
                     {"float32": 66900.0, "tf32": 494700.0, "bfloat16": 989400.0, "float16": 989400.0,
                      "float64": 33500.0}, 3350.0, _NV.format("H100"), ("H100",)),
        HardwareSpec("h200", "cuda",
                     {"float32": 66900.0, "tf32": 494700.0, "bfloat16": 989400.0, "float16": 989400.0,
                      "float64": 33500.0}, 4800.0, _NV.format("H200"), ("H200",)),
        HardwareSpec("a100-sxm", "cuda",
                     {"float32": 19500.0, "tf32": 156000.0, "bfloat16": 312000.0, "float16": 312000.0,
                      "float64": 9700.0}, 2039.0, _NV.format("A100 80GB"), ("A100",)),
        HardwareSpec("generic-cpu", "cpu", {"float32": 100.0, "bfloat16": 100.0, "float64": 50.0}, 20.0,
                     "nominal figures, not a datasheet: pass --peak-gflops and --peak-bandwidth for real ones"),
    )
}


def resolve(name: str, peak_gflops: float | None = None, peak_bandwidth: float | None = None,
            device: str = "cpu") -> HardwareSpec:
    """The registry entry for ``name``, or a custom spec when peaks are given; unknown names without peaks fail."""
    for value, flag in ((peak_gflops, "--peak-gflops"), (peak_bandwidth, "--peak-bandwidth")):
        if value is not None and not (value > 0 and value < 1e9):
            raise FxFusionError(f"{flag} must be a positive number (GFLOP/s or GB/s), got {value}")
    known = REGISTRY.get(name)
    if known is None and (peak_gflops is None or peak_bandwidth is None):
        raise FxFusionError(
            f"unknown hardware {name!r}: known names are {', '.join(REGISTRY)}; "
            "for other hardware pass both --peak-gflops and --peak-bandwidth"
        )
    if peak_gflops is None and peak_bandwidth is None:
        return known
    base = known.peak_gflops if known else {}
    gflops = {k: v for k, v in base.items()} if peak_gflops is None else {
        "float32": peak_gflops, "bfloat16": peak_gflops, "float16": peak_gflops, "float64": peak_gflops}
    return HardwareSpec(
        name=name, device=known.device if known else device_kind(device), peak_gflops=gflops,
        peak_bandwidth_gbs=peak_bandwidth if peak_bandwidth is not None else known.peak_bandwidth_gbs,
        source="peaks given on the command line" + (f"; otherwise {known.source}" if known else ""),
        match=known.match if known else (),
    )


def device_name(device: str) -> str:
    if is_cuda(device):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mismatch_warning(spec: HardwareSpec, device: str, name: str) -> str | None:
    """A warning when the named hardware is evidently not the device being measured."""
    if spec.device != device_kind(device):
        return f"hardware {spec.name!r} is a {spec.device} entry but the measured device is {device} ({name})"
    if spec.match and not any(m.lower() in name.lower() for m in spec.match):
        return f"hardware {spec.name!r} does not look like the measured device ({name})"
    return None


def detect(device: str) -> HardwareSpec:
    """The registry entry whose match strings name this device, else a nominal entry of its kind (cpu or cuda)."""
    kind = device_kind(device)
    name = device_name(device)
    for spec in REGISTRY.values():
        if spec.device == kind and spec.match and any(m.lower() in name.lower() for m in spec.match):
            return spec
    if kind == "cpu":
        return REGISTRY["generic-cpu"]
    return HardwareSpec("generic-cuda", "cuda", {"float32": 10000.0, "bfloat16": 100000.0, "float16": 100000.0,
                                                 "float64": 5000.0}, 1000.0,
                        f"nominal figures for an unregistered GPU ({name}), not a datasheet")
