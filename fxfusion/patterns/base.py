"""A fusion pattern is a small declarative object: what it computes, what it costs, and how it can be fused.

Each pattern declares
  * ``make_inputs(shape, dtype, device, gen)``: the tensors of one problem (parameters included);
  * ``eager(**inputs)``: the separate ops as users write them (also the float64 reference, run in float64);
  * ``manual``: a real hand fusion, built once from the inputs (BatchNorm folding happens at build time, as it
    would at model-load time) and returning a zero-argument callable;
  * ``flops(shape)`` and ``bytes(shape, itemsize, fused)``: the analytic cost model; every op reads its inputs and
    writes its output (parameters included) when unfused, and intermediates never reach memory when fused.

The ``compile`` variants (torch.compile of ``eager``) are generic and live in :mod:`fxfusion.variants`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

Shape = Mapping[str, int]
Inputs = dict[str, torch.Tensor]
Thunk = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class ManualVariant:
    """A hand fusion. ``build(inputs)`` returns the timed zero-argument callable; ``note`` says what it fuses."""

    name: str
    build: Callable[[Inputs], Thunk]
    note: str
    # Returns a reason string when the variant cannot run for this problem (e.g. device), else None.
    unsupported: Callable[[Shape, torch.dtype, str], str | None] = lambda shape, dtype, device: None


@dataclass(frozen=True)
class Pattern:
    name: str  # registry key, e.g. "linear_bias_relu"
    family: str  # "linear" | "conv" | "attention" | "norm"
    title: str  # human name, e.g. "Linear+Bias+ReLU"
    legacy_name: str  # the original suite's name, e.g. "Linear_Bias_ReLU"
    shape_keys: tuple[str, ...]
    make_inputs: Callable[[Shape, torch.dtype, str, torch.Generator], Inputs]
    eager: Callable[..., torch.Tensor]
    manual: tuple[ManualVariant, ...]
    flops: Callable[[Shape], int]
    bytes: Callable[[Shape, int, bool], int]
    shapes: Mapping[str, tuple[Shape, ...]]  # size set name ("quick", "full", "gpu") -> shapes
    ops: tuple[str, ...]  # the unfused op chain, for humans and the matcher
    extra: Callable[[Shape], dict] = field(default=lambda shape: {})
    # Inputs whose first dimension is the first shape key (rows, batch); the output's first dimension is too.  The
    # float64 reference of a large problem is computed on a slice of these rows (rows are independent).
    batch_inputs: tuple[str, ...] = ("x",)

    def check_shape(self, shape: Shape) -> dict[str, int]:
        missing = [k for k in self.shape_keys if k not in shape]
        unknown = [k for k in shape if k not in self.shape_keys]
        if missing or unknown:
            from fxfusion.errors import FxFusionError

            raise FxFusionError(
                f"pattern {self.name} takes shape keys {','.join(self.shape_keys)}; "
                f"got {','.join(shape) or 'none'}"
            )
        return {k: int(shape[k]) for k in self.shape_keys}

    def reference_slice(self, shape: Shape, inputs: dict, max_bytes: int) -> tuple[dict, int]:
        """Inputs cut to the leading rows whose float64 unfused working set fits in ``max_bytes``, and the row count."""
        key = self.shape_keys[0]
        rows = shape[key]
        while rows > 1 and self.bytes({**shape, key: rows}, 8, False) > max_bytes:
            rows = (rows + 1) // 2
        if rows == shape[key]:
            return inputs, rows
        return {k: (v[:rows] if k in self.batch_inputs else v) for k, v in inputs.items()}, rows

    def memory_reduction(self, shape: Shape, itemsize: int) -> float:
        unfused = self.bytes(shape, itemsize, False)
        return 1.0 - self.bytes(shape, itemsize, True) / unfused if unfused else 0.0


def randn(gen: torch.Generator, *size: int, dtype: torch.dtype, device: str, scale: float = 1.0) -> torch.Tensor:
    """Random normal data made on the CPU from a seeded generator (so every device sees the same numbers)."""
    t = torch.randn(*size, generator=gen, dtype=torch.float32) * scale
    return t.to(device=device, dtype=dtype)


def shapes(*rows: dict[str, int]) -> tuple[dict[str, int], ...]:
    return tuple(rows)
