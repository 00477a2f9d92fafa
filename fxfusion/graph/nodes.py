"""Reading aten-level fx nodes: op kinds, values, shapes, dtypes and arguments -- what matchers, rewrites and
in-model timing all ask of a node."""

from __future__ import annotations

import operator
import torch
from torch.fx import Node

from fxfusion.measure import devices

# aten op name (overload packet) -> the kind matchers speak of.  Names not listed are their own kind.
KINDS: dict[str, str] = {
    "linear": "linear", "addmm": "addmm", "matmul": "matmul", "mm": "matmul", "bmm": "matmul",
    "t": "transpose", "numpy_T": "transpose", "transpose": "transpose", "permute": "transpose",
    "view": "view", "reshape": "view", "_unsafe_view": "view",
    "conv1d": "conv", "conv2d": "conv", "convolution": "conv", "_convolution": "conv",
    "batch_norm": "batch_norm", "_native_batch_norm_legit_no_training": "batch_norm",
    "_native_batch_norm_legit": "batch_norm", "_native_batch_norm_legit_functional": "batch_norm",
    "native_batch_norm": "batch_norm",
    "relu": "relu", "relu_": "relu", "gelu": "gelu", "gelu_": "gelu", "silu": "silu", "silu_": "silu",
    "relu6": "relu6", "hardtanh": "hardtanh", "hardtanh_": "hardtanh", "hardswish": "hardswish",
    "hardswish_": "hardswish", "sigmoid_": "sigmoid", "hardsigmoid_": "hardsigmoid",
    "softmax": "softmax", "_softmax": "softmax", "_safe_softmax": "softmax",
    "dropout": "dropout", "native_dropout": "dropout",
    "to": "cast", "_to_copy": "cast", "type_as": "cast",
    "add": "add", "div": "div", "mul": "mul", "masked_fill": "masked_fill", "where": "where",
    "layer_norm": "layer_norm", "native_layer_norm": "layer_norm", "rms_norm": "rms_norm", "rsqrt": "rsqrt",
    "scaled_dot_product_attention": "sdpa", "_scaled_dot_product_flash_attention": "sdpa",
    "_scaled_dot_product_efficient_attention": "sdpa", "_scaled_dot_product_flash_attention_for_cpu": "sdpa",
    "_scaled_dot_product_cudnn_attention": "sdpa",
}
# Checks export inserts in front of a cast (``_assert_tensor_metadata(x, dtype=...)``): they compute nothing, so a
# site takes the checks of its own intermediates with it instead of counting them as outside uses.
ASSERT_OPS = frozenset({"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size"})


def op_name(node: Node) -> str:
    target = node.target
    if target is operator.getitem:
        return "getitem"
    packet = getattr(target, "overloadpacket", None)
    return getattr(packet, "__name__", None) or getattr(target, "__name__", str(target))


def kind(node) -> str | None:
    if not isinstance(node, Node) or node.op != "call_function":
        return None
    name = op_name(node)
    return KINDS.get(name, name)


def val(node):
    if not isinstance(node, Node):
        return None
    v = node.meta.get("val", node.meta.get("example_value"))
    return v if isinstance(v, torch.Tensor) else None


def shape(node) -> tuple[int, ...] | None:
    v = val(node)
    try:
        return tuple(int(d) for d in v.shape) if v is not None else None
    except (TypeError, ValueError):  # symbolic sizes: no static shape to decide at
        return None


def dtype_name(node) -> str | None:
    v = val(node)
    """The library's name of the node's dtype ("bfloat16"), None for a dtype it has no patterns for."""
    name = devices.dtype_name(v.dtype) if v is not None else None
    return name if name in devices.DTYPES else None


def arg(node: Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def eval_dropout(node) -> bool:
    """``dropout(x, p, train=False)``: the identity (an eval-mode model's Dropout, as export writes it)."""
    return kind(node) == "dropout" and op_name(node) == "dropout" and arg(node, 2, "train", True) is False


def only_user(node: Node) -> Node | None:
    """The one user that computes something (export's dtype checks in front of a cast do not count)."""
    users = [u for u in node.users if op_name(u) not in ASSERT_OPS]
    return users[0] if len(users) == 1 else None


def tensor_value(node: Node) -> Node:
    """The node holding an op's tensor result: itself, or ``getitem(node, 0)`` for ops returning tuples."""
    if isinstance(node.meta.get("val"), (tuple, list)):
        first = [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]
        return first[0] if first else node
    return node


def is_scalar(x) -> bool:
    return isinstance(x, (int, float)) or (isinstance(x, Node) and shape(x) == ())


def swaps_last_two(node: Node) -> bool:
    """transpose/permute/t/numpy_T of a tensor whose effect is to swap its last two dims."""
    k, n = kind(node), op_name(node)
    if k != "transpose":
        return False
    src = shape(node.args[0])
    if src is None:
        return False
    rank = len(src)
    if n in ("t", "numpy_T"):
        return rank == 2
    if n == "transpose":
        dims = sorted(d % rank for d in node.args[1:3])
        return dims == [rank - 2, rank - 1]
    if n == "permute":
        perm = [d % rank for d in node.args[1]]
        return perm == list(range(rank - 2)) + [rank - 1, rank - 2]
    return False



def node_name(node) -> str:
    return node.name if isinstance(node, Node) else ""


