"""Residual add + norm with the sum written out: one Triton kernel, two outputs (CUDA only; Triton imported lazily).

In a pre-LN transformer the residual sum ``h = x + residual`` is normalised (``y = norm(h)``) and read again by the
next residual add, so a fused kernel must write ``h`` as well as ``y``.  One program per row:

  reads x and residual (2MN), the weight (N) and, for LayerNorm, the bias (N); writes h and y (2MN)
    -> 4MN + 2N elements (LayerNorm), 4MN + N (RMSNorm);
  eager: the add reads 2MN and writes h (MN), the norm reads h again (MN) and writes y (MN), plus its temporaries
  (none for aten.layer_norm; the squares, row means and the normalised value for a written-out RMSNorm).

``h`` is rounded to the storage dtype before it is normalised, as the separate ops do (the add writes h in that
dtype, the norm reads it back), so y is the norm of the very h the kernel writes.  Statistics are in float32.
:func:`add_norm_reference` is the same computation in torch: the CUDA tests compare the kernel with it, and the
CPU tests rewrite graphs with it where the kernel cannot run.
"""

from __future__ import annotations

import torch

_KERNEL = None


def _build_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def add_norm_kernel(x_ptr, r_ptr, w_ptr, b_ptr, h_ptr, y_ptr, n_cols, eps, BLOCK: tl.constexpr,
                        RMS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        keep = cols < n_cols
        offset = row * n_cols
        x = tl.load(x_ptr + offset + cols, mask=keep, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + offset + cols, mask=keep, other=0.0).to(tl.float32)
        h = (x + r).to(h_ptr.dtype.element_ty)  # the sum, rounded as the add writes it (to nearest even)
        tl.store(h_ptr + offset + cols, h, mask=keep)
        hf = h.to(tl.float32)  # masked columns are 0 + 0: they add nothing to the sums below
        if RMS:
            normed = hf * tl.rsqrt(tl.sum(hf * hf, axis=0) / n_cols + eps)
        else:
            centred = tl.where(keep, hf - tl.sum(hf, axis=0) / n_cols, 0.0)
            normed = centred * tl.rsqrt(tl.sum(centred * centred, axis=0) / n_cols + eps)
        if HAS_WEIGHT:
            normed = normed * tl.load(w_ptr + cols, mask=keep, other=0.0).to(tl.float32)
        if HAS_BIAS:
            normed = normed + tl.load(b_ptr + cols, mask=keep, other=0.0).to(tl.float32)
        tl.store(y_ptr + offset + cols, normed.to(y_ptr.dtype.element_ty), mask=keep)

    return add_norm_kernel


def add_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
             eps: float, rms: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, y): h = x + residual and y = norm(h) over the last dim, in one pass; CUDA tensors of one shape and dtype."""
    import triton

    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _build_kernel()
    n_cols = x.shape[-1]
    x2, r2 = x.reshape(-1, n_cols).contiguous(), residual.reshape(-1, n_cols).contiguous()
    h, y = torch.empty_like(x2), torch.empty_like(x2)
    w = weight.contiguous() if weight is not None else x2  # a placeholder pointer, never read
    b = bias.contiguous() if bias is not None else x2
    block = triton.next_power_of_2(n_cols)
    _KERNEL[(x2.shape[0],)](x2, r2, w, b, h, y, n_cols, eps, BLOCK=block, RMS=rms, HAS_WEIGHT=weight is not None,
                            HAS_BIAS=bias is not None, num_warps=min(16, max(1, block // 256)))
    return h.reshape(x.shape), y.reshape(x.shape)


def add_layernorm_sum(x, residual, weight, bias, eps: float = 1e-5):
    """(x + residual, LayerNorm(x + residual)) in one Triton kernel."""
    return add_norm(x, residual, weight, bias, eps, rms=False)


def add_rmsnorm_sum(x, residual, weight, eps: float = 1e-6):
    """(x + residual, RMSNorm(x + residual) * weight) in one Triton kernel."""
    return add_norm(x, residual, weight, None, eps, rms=True)


def add_norm_reference(x, residual, weight, bias, eps: float, rms: bool):
    """What :func:`add_norm` computes, in torch: h rounded to the storage dtype, statistics in float32 (or float64)."""
    h = x + residual
    hf = h.to(torch.promote_types(h.dtype, torch.float32))
    if rms:
        normed = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    else:
        centred = hf - hf.mean(-1, keepdim=True)
        normed = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        normed = normed * weight.to(hf.dtype)
    if bias is not None:
        normed = normed + bias.to(hf.dtype)
    return h, normed.to(h.dtype)


def add_layernorm_sum_reference(x, residual, weight, bias, eps: float = 1e-5):
    """:func:`add_layernorm_sum` in torch (same arguments, same outputs)."""
    return add_norm_reference(x, residual, weight, bias, eps, rms=False)


def add_rmsnorm_sum_reference(x, residual, weight, eps: float = 1e-6):
    """:func:`add_rmsnorm_sum` in torch (same arguments, same outputs)."""
    return add_norm_reference(x, residual, weight, None, eps, rms=True)


def linear_residual(x, weight, residual):
    """``F.linear(x, weight) + residual`` as one GEMM whose epilogue adds the residual (addmm's C operand, beta 1):
    the product is never written apart and read back.  ``x`` (..., K), ``weight`` (N, K), ``residual`` (..., N)."""
    n = weight.shape[0]
    out = torch.addmm(residual.reshape(-1, n), x.reshape(-1, x.shape[-1]), weight.t())
    return out.view(residual.shape)
