"""Norms: the written-out RMSNorm becomes ``aten.rms_norm``; add + LayerNorm becomes the Triton kernel (CUDA); a
residual add + LayerNorm / RMSNorm whose sum is read again becomes one two-output kernel (CUDA), its sum and its
normalised value both rewired."""

from __future__ import annotations

import operator

import torch
from torch import fx

from fxfusion.graph.edit import NotApplicable, aten, arg, copy_meta, device_of, is_call, scalar, shape_of, value_of
from fxfusion.graph.nodes import ASSERT_OPS, eval_dropout, kind, op_name, swaps_last_two
from fxfusion.fusions.kernels import add_layernorm, triton_unavailable
from fxfusion.fusions.norm.kernels import add_layernorm_sum, add_rmsnorm_sum, linear_residual


def rewrite_rms_norm(gm, nodes, group):
    inside = set(nodes)
    pow_ = next((n for n in nodes if is_call(n, aten.pow.Tensor_Scalar) and n.args[1] == 2), None)
    eps = _eps(nodes)
    if pow_ is None or eps is None:
        raise NotApplicable("cannot find x.pow(2) and the + eps of the RMSNorm")
    x, last = pow_.args[0], nodes[-1]
    scale = last.args[0] if kind(last) == "cast" and isinstance(last.args[0], fx.Node) else last  # Gemma: cast after
    if not is_call(scale, aten.mul.Tensor):
        raise NotApplicable("the RMSNorm does not end with the weight multiply")
    weight = next((a for a in scale.args[:2] if isinstance(a, fx.Node) and (a not in inside or _one_plus(a))), None)
    n = (shape_of(x) or (0,))[-1]
    if weight is None or shape_of(weight) != (n,):
        raise NotApplicable(f"the RMSNorm weight is not a ({n},) tensor")
    # Llama normalises in float32 (x is an upcast) and returns the model's dtype.  The fused op takes the input before
    # the upcast when it has the weight's dtype (rms_norm accumulates in float32 itself, and with mixed input and weight
    # dtypes it would not dispatch to its fused kernel); any other dtype change is cast back to what the site returned.
    want = value_of(last)
    if kind(x) == "cast" and isinstance(want, torch.Tensor) and isinstance(value_of(x.args[0]), torch.Tensor) \
            and value_of(x.args[0]).dtype == want.dtype == getattr(value_of(weight), "dtype", None):
        x = x.args[0]
    with gm.graph.inserting_before(last):
        y = gm.graph.call_function(aten.rms_norm.default, (x, [n], weight, eps))
        got = value_of(x)
        if isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor) and want.dtype != got.dtype:
            y = gm.graph.call_function(aten.to.dtype, (y, want.dtype))
    return last, y


def _eps(nodes: list[fx.Node]) -> float | None:
    """The RMSNorm's eps: the scalar of the add its rsqrt reads (Gemma's 1 + w is an add of a scalar too)."""
    rsqrt = next((n for n in nodes if is_call(n, aten.rsqrt.default)), None)
    add = rsqrt.args[0] if rsqrt is not None else None
    return scalar(add.args[1]) if is_call(add, aten.add.Tensor, aten.add.Scalar) else None


def _one_plus(node: fx.Node) -> bool:
    """Gemma's 1 + w, inside the site: it stays, computed from the parameter, and is rms_norm's weight."""
    return is_call(node, aten.add.Tensor, aten.add.Scalar) and any(scalar(a) == 1.0 for a in node.args)


def _add_before(ln, nodes) -> fx.Node | None:
    """The site's add the LayerNorm reads, directly or through an eval-mode dropout (the identity)."""
    src = ln.args[0]
    if eval_dropout(src) and src in set(nodes):
        src = src.args[0]
    return src if is_call(src, aten.add.Tensor) and src in set(nodes) else None


def _full_shape(add) -> None:
    """The Triton kernels read the residual row for row: a residual broadcast over the leading dims (position
    embeddings) is refused here rather than copied to full size, which would write what the fusion saves."""
    if any(shape_of(a) != shape_of(add) for a in add.args[:2]):
        raise NotApplicable("the residual is broadcast (position embeddings): the Triton kernel reads a full-shape "
                            "residual; torch.compile fuses it")


def rewrite_triton_add_layernorm(gm, nodes, group):
    ln = next((n for n in nodes if is_call(n, aten.layer_norm.default)), None)
    add = _add_before(ln, nodes) if ln is not None else None
    if add is None:
        raise NotApplicable("no add -> layer_norm chain in the site")
    if device_of(ln) != "cuda" or triton_unavailable():
        raise NotApplicable("the fused add+LayerNorm is a Triton kernel, for CUDA only")
    _full_shape(add)
    x, r = add.args[:2]
    with gm.graph.inserting_before(ln):
        y = gm.graph.call_function(add_layernorm, (x, r, arg(ln, 2, "weight", None), arg(ln, 3, "bias", None),
                                                   arg(ln, 4, "eps", 1e-5)))
    return ln, y


# -- residual add + norm, the sum read again: one call, two outputs -----------------------------------------------

def _residual_add(nodes) -> fx.Node | None:
    """The site's ``x + residual``: an add of two tensors of its own shape (the RMSNorm's ``+ eps`` adds a scalar)."""
    return next((n for n in nodes if is_call(n, aten.add.Tensor) and len(n.args) == 2 and n.kwargs.get("alpha", 1) == 1
                 and all(isinstance(a, fx.Node) and shape_of(a) == shape_of(n) for a in n.args)), None)


def _site_output(nodes) -> fx.Node:
    """The normalised value: the site's last node that computes something (export's checks come before it)."""
    return next(n for n in reversed(nodes) if op_name(n) not in ASSERT_OPS)


def _dtype(node):
    v = value_of(node)
    return getattr(v, "dtype", None)


def _rewire_sum(gm, nodes, fused, args, add, out):
    """Insert ``fused(*args) -> (h, y)`` where both of its outputs are available to every reader; the readers of the
    sum outside the site (and of its same-dtype casts inside it: ``h.to(float32)`` of a float32 ``h`` is the sum,
    and export makes the next residual add read that cast) now read ``h``; returns ``(out, y)`` for the driver,
    which rewires the normalised value and erases the site.  Checks everything before it inserts anything."""
    inside = set(nodes)
    if _dtype(out) != _dtype(add):
        raise NotApplicable(f"the normalised value is {_dtype(out)} and the sum {_dtype(add)}: the fused kernel "
                            "writes both in one dtype")
    sums = [add] + [u for u in add.users if u in inside and (eval_dropout(u) or kind(u) == "cast" and _dtype(u)
                                                            == _dtype(add) and shape_of(u) == shape_of(add))]
    readers = [u for s in sums for u in s.users if u not in inside]
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    first = min([out, *readers], key=order.__getitem__)
    late = [a for a in args if isinstance(a, fx.Node) and order[a] >= order[first]]
    if late:
        raise NotApplicable(f"{late[0].name} is computed after {first.name}, which reads the site's output: the "
                            "fused call cannot come before both")
    with gm.graph.inserting_before(first):
        call = gm.graph.call_function(fused, tuple(args))
        h = gm.graph.call_function(operator.getitem, (call, 0))
        y = gm.graph.call_function(operator.getitem, (call, 1))
    call.meta["val"] = (value_of(add), value_of(out))
    copy_meta(h, add)
    for s in sums:
        for u in [u for u in s.users if u not in inside]:
            u.replace_input_with(s, h)
    return out, y


def _cuda_only(nodes, what: str) -> None:
    if device_of(*nodes) != "cuda" or triton_unavailable():
        raise NotApplicable(f"the fused {what} is a Triton kernel, for CUDA only")


def rewrite_add_layernorm_sum(gm, nodes, group, fused):
    """h = x + residual; y = layer_norm(h), h read again  ->  ``fused(x, residual, weight, bias, eps) -> (h, y)``."""
    ln = next((n for n in nodes if is_call(n, aten.layer_norm.default, aten.native_layer_norm.default)), None)
    add = _add_before(ln, nodes) if ln is not None else None
    if add is None:
        raise NotApplicable("no residual add -> layer_norm chain in the site")
    _full_shape(add)
    if list(ln.args[1]) != list(shape_of(add) or ())[-1:]:
        raise NotApplicable(f"the LayerNorm normalises over {list(ln.args[1])}, not the last dim alone")
    args = (*add.args, arg(ln, 2, "weight", None), arg(ln, 3, "bias", None), arg(ln, 4, "eps", 1e-5))
    return _rewire_sum(gm, nodes, fused, args, add, _site_output(nodes))


def rewrite_add_rmsnorm_sum(gm, nodes, group, fused):
    """h = x + residual; y = RMSNorm(h) written out, h read again  ->  ``fused(x, residual, weight, eps) -> (h, y)``."""
    inside = set(nodes)
    add, out = _residual_add(nodes), _site_output(nodes)
    eps = _eps(nodes)
    if add is None or eps is None:
        raise NotApplicable("cannot find the residual add, the + eps and the rsqrt of the RMSNorm")
    if not is_call(out, aten.mul.Tensor):
        raise NotApplicable("the RMSNorm does not end with the weight multiply")
    weight = next((a for a in out.args[:2] if isinstance(a, fx.Node) and a not in inside), None)
    n = (shape_of(add) or (0,))[-1]
    if weight is None or shape_of(weight) != (n,):
        raise NotApplicable(f"the RMSNorm weight is not a ({n},) tensor")
    return _rewire_sum(gm, nodes, fused, (*add.args, weight, eps), add, out)


def rewrite_triton_add_layernorm_sum(gm, nodes, group):
    _cuda_only(nodes, "add+LayerNorm writing the sum")
    return rewrite_add_layernorm_sum(gm, nodes, group, add_layernorm_sum)


def rewrite_triton_add_rmsnorm_sum(gm, nodes, group):
    _cuda_only(nodes, "add+RMSNorm writing the sum")
    return rewrite_add_rmsnorm_sum(gm, nodes, group, add_rmsnorm_sum)


# -- the bias-free projection in front: the residual added in its epilogue ------------------------------------------

def _projection(nodes, add) -> tuple[fx.Node, fx.Node, fx.Node] | None:
    """(x, weight (N, K), the node the add reads) of the site's bias-free GEMM: ``linear(x, W)``, or ``mm(x, t(W))``
    with a view after it, an eval-mode Dropout or not before the add; None when the add reads no GEMM of the site."""
    inside = set(nodes)
    for read in add.args[:2]:
        gemm = read.args[0] if eval_dropout(read) and read in inside else read
        gemm = gemm.args[0] if is_call(gemm, aten.view.default) and gemm in inside else gemm
        if gemm not in inside:
            continue
        if is_call(gemm, aten.linear.default) and arg(gemm, 2, "bias", None) is None:
            return gemm.args[0], gemm.args[1], read
        rhs = gemm.args[1] if is_call(gemm, aten.mm.default, aten.matmul.default) else None
        if rhs in inside and swaps_last_two(rhs):  # t, numpy_T, transpose, permute of the (N, K) weight
            return gemm.args[0], rhs.args[0], read
    return None


def rewrite_addmm_rms_norm(gm, nodes, group):
    """h = x @ W^T + residual; y = RMSNorm(h) written out, h read again  ->  ``h = linear_residual(x, W, residual)``
    (addmm, the residual as C) read by every reader of the sum, and ``y = rms_norm(h)``."""
    add = _residual_add(nodes)
    found = _projection(nodes, add) if add is not None else None
    if found is None:
        raise NotApplicable("cannot find the bias-free GEMM read by the residual add")
    x, weight, read = found
    residual = add.args[1] if add.args[0] is read else add.args[0]
    if _dtype(read) != _dtype(residual):
        raise NotApplicable(f"the GEMM writes {_dtype(read)} and the residual is {_dtype(residual)}: addmm adds them "
                            "in one dtype")
    last, y = rewrite_rms_norm(gm, nodes, group)  # checks the norm before it inserts anything; y reads the sum
    with gm.graph.inserting_before(add):
        h = gm.graph.call_function(linear_residual, (x, weight, residual))
    copy_meta(h, add)
    add.replace_all_uses_with(h)
    return last, y
