"""Hand-written Triton kernels for fusions PyTorch has no single op for (CUDA only; imported lazily).

add_layernorm: out = LayerNorm(x + residual) over the last dim, one program per row.  Bytes: reads x, residual
(2MN), weight and bias (2N), writes out (MN) -- against eager's add (3MN) plus layer_norm (2MN + 2N).
"""

from __future__ import annotations

import torch

_KERNEL = None


def triton_unavailable() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install 'fxfusion[cuda]')"
    return None


def _build_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def add_layernorm_kernel(x_ptr, r_ptr, w_ptr, b_ptr, out_ptr, n_cols, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        keep = cols < n_cols
        offset = row * n_cols
        h = tl.load(x_ptr + offset + cols, mask=keep, other=0.0).to(tl.float32)
        h += tl.load(r_ptr + offset + cols, mask=keep, other=0.0).to(tl.float32)
        mean = tl.sum(h, axis=0) / n_cols
        centred = tl.where(keep, h - mean, 0.0)
        var = tl.sum(centred * centred, axis=0) / n_cols
        w = tl.load(w_ptr + cols, mask=keep, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=keep, other=0.0).to(tl.float32)
        y = centred * tl.rsqrt(var + eps) * w + b
        tl.store(out_ptr + offset + cols, y.to(out_ptr.dtype.element_ty), mask=keep)

    return add_layernorm_kernel


def add_layernorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm(x + residual) in one pass; x and residual are contiguous (..., N) tensors on a CUDA device."""
    import triton

    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _build_kernel()
    n_cols = x.shape[-1]
    x2, r2 = x.reshape(-1, n_cols), residual.reshape(-1, n_cols)
    out = torch.empty_like(x2)
    block = triton.next_power_of_2(n_cols)
    _KERNEL[(x2.shape[0],)](x2, r2, weight, bias, out, n_cols, eps, BLOCK=block, num_warps=min(16, max(1, block // 256)))
    return out.reshape(x.shape)
