"""Rotary: ``x * cos + cat(-x[..., D/2:], x[..., :D/2]) * sin``, anchored on the cat (either order of each product
and of the sum)."""

from __future__ import annotations

from torch.fx import Node

from fxfusion.fusions.base import Candidate, Context
from fxfusion.graph.nodes import arg, dtype_name, kind, node_name, only_user, shape, val


def _half(node, x_dim: int, start: int, end: int | None) -> bool:
    """``node`` is ``x[..., start:end]`` along the last dim (``end`` None: to the end, however export writes it)."""
    if kind(node) != "slice" or not isinstance(node.args[0], Node):
        return False
    dim, lo, hi = arg(node, 1, "dim", 0), arg(node, 2, "start", None) or 0, arg(node, 3, "end", None)
    d = (shape(node.args[0]) or (0,))[-1]
    return dim in (x_dim, -1) and lo == start and (hi is None or hi >= d if end is None else hi == end)


def _other(node: Node, one) -> Node | None:
    a, b = node.args[:2]
    other = b if a is one else a if b is one else None
    return other if isinstance(other, Node) else None


def match_rotary(ctx: Context, cat: Node) -> Candidate | None:
    parts = cat.args[0] if cat.args and isinstance(cat.args[0], (list, tuple)) else ()
    if len(parts) != 2 or kind(parts[0]) != "neg" or not isinstance(parts[0].args[0], Node):
        return None
    neg, first = parts
    second = neg.args[0]
    x = first.args[0] if isinstance(first, Node) and first.args else None
    xs = shape(x)
    if xs is None or len(xs) < 2 or xs[-1] % 2 or second.args[0] is not x:
        return None
    d, last = xs[-1], len(xs) - 1
    if arg(cat, 1, "dim", 0) not in (-1, last) or not _half(first, last, 0, d // 2) \
            or not _half(second, last, d // 2, None):
        return None
    mul_sin = only_user(cat)
    sin = _other(mul_sin, cat) if kind(mul_sin) == "mul" else None
    out = only_user(mul_sin) if sin is not None else None
    if kind(out) != "add" or len(out.args) != 2 or out.kwargs.get("alpha", 1) != 1:
        return None
    mul_cos = _other(out, mul_sin)
    cos = _other(mul_cos, x) if kind(mul_cos) == "mul" else None
    if cos is None or len(mul_cos.users) != 1 or any(len(n.users) != 1 for n in (first, second, neg)):
        return None
    if shape(out) != xs or (shape(cos) or (0,))[-1] != d or (shape(sin) or (0,))[-1] != d:
        return None
    nodes = [mul_cos, first, second, neg, cat, mul_sin, out]
    H, S = (xs[1], xs[2]) if len(xs) == 4 else (1, xs[-2])
    B = max(1, (val(x).numel() // (H * S * d)) if val(x) is not None and H * S * d else 1)  # rank 3: (B, S, D)
    roles = {"x": node_name(x), "cos": node_name(cos), "sin": node_name(sin), "output": out.name}
    return Candidate("rotary", nodes, out, {"B": B, "H": H, "S": S, "D": d}, dtype_name(out) or "float32", roles,
                     "x * cos + rotate_half(x) * sin (slice, neg, cat written out)", boundary=[x, cos, sin])
