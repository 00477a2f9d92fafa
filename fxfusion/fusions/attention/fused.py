"""Attention's fused computations, written once: the patterns' variants call them to be measured, the rewrites trace
them into graphs (:func:`fxfusion.graph.edit.emit_traced`, at export's pre-dispatch level, where SDPA stays one op).
"""

from __future__ import annotations

import torch

SDPA = torch.ops.aten.scaled_dot_product_attention.default


def attend(q, k, v, mask=None, *, scale: float, causal: bool = False, gqa: bool = False):
    """SDPA as the aten op export records: q (..., L, E), k (..., S, E), v (..., S, Ev); ``mask`` boolean (True
    keeps) or additive, broadcasting to (..., L, S); ``gqa``: k and v have fewer heads than q (dim -3), repeated by
    SDPA itself (torch >= 2.5)."""
    extra = {"enable_gqa": True} if gqa else {}
    return SDPA(q, k, v, mask, 0.0, causal, scale=scale, **extra)


def scaled_scores(q, kt, scale: float):
    """``scale * q @ kt`` with the scale applied by the GEMM (baddbmm's alpha), so the scores are written once:
    q (..., L, E), kt (..., E, S) with the same batch dimensions."""
    *batch, L, E = q.shape
    S = kt.shape[-1]
    q3, kt3 = q.reshape(-1, L, E), kt.reshape(-1, E, S)
    out = torch.empty(q3.shape[0], L, S, dtype=q.dtype, device=q.device)
    return torch.baddbmm(out, q3, kt3, beta=0.0, alpha=scale).reshape(*batch, L, S)


def to_batch(x, batch: tuple[int, ...]):
    """``x`` (..., R, C) with its batch dimensions made ``batch`` (bmm's (B*H, L, E) against a (B, H, ...) site)."""
    return x if tuple(x.shape[:-2]) == tuple(batch) else x.reshape(*batch, *x.shape[-2:])


def rebatch(x, batch: tuple[int, ...], new_batch: tuple[int, ...]):
    """A mask ``x`` that broadcasts to (*batch, L, S), reshaped as the scores are to (*new_batch, L, S) -- without
    materialising what it broadcasts over where it can: a mask shared by the whole batch, or one with every batch
    dimension, keeps its own (maybe size-1) last two dimensions."""
    own = (1,) * (len(batch) + 2 - x.dim()) + tuple(x.shape[:-2])
    if all(d == 1 for d in own):
        return x.reshape(*(1,) * len(new_batch), *x.shape[-2:])
    if own == tuple(batch):
        return x.reshape(*new_batch, *x.shape[-2:])
    return x.expand(*batch, *x.shape[-2:]).reshape(*new_batch, *x.shape[-2:])
