"""What every matcher shares: op kinds, small readers of fx nodes, and the Graph / Candidate / Context records.

A matcher (``fxfusion.matchers.<family>``) takes ``(ctx, anchor)`` and returns a :class:`Candidate` or None; the
driver (:mod:`fxfusion.match`) runs them, checks the shared legality rules and turns candidates into sites.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch.fx import Node

from fxfusion.capture import module_path
from fxfusion.sites import FUSIBLE

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
    "relu6": "relu6", "hardtanh": "hardtanh", "hardtanh_": "hardtanh",
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
ACT_TITLES = {"relu": "ReLU", "gelu": "GELU", "gelu_tanh": "GELU(tanh)", "silu": "SiLU", "relu6": "ReLU6"}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16",
                torch.float64: "float64"}


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
    return _DTYPE_NAMES.get(v.dtype) if v is not None else None


def arg(node: Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def only_user(node: Node) -> Node | None:
    """The one user that computes something (export's dtype checks in front of a cast do not count)."""
    users = [u for u in node.users if op_name(u) not in ASSERT_OPS]
    return users[0] if len(users) == 1 else None


def users_of_kind(node: Node, kinds: Iterable[str]) -> list[Node]:
    kinds = set(kinds)
    return [u for u in node.users if kind(u) in kinds]


def tensor_value(node: Node) -> Node:
    """The node holding an op's tensor result: itself, or ``getitem(node, 0)`` for ops returning tuples."""
    if isinstance(node.meta.get("val"), (tuple, list)):
        first = [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]
        return first[0] if first else node
    return node


def activation(node: Node) -> str | None:
    """'relu' | 'gelu' | 'gelu_tanh' | 'silu' | 'relu6' for an activation node the library has patterns for."""
    k = kind(node)
    if k == "gelu":
        return "gelu_tanh" if arg(node, 1, "approximate", "none") == "tanh" else "gelu"
    if k == "hardtanh":
        low, high = arg(node, 1, "min_val", -1.0), arg(node, 2, "max_val", 1.0)
        return "relu6" if (low, high) == (0, 6) or (low, high) == (0.0, 6.0) else None
    return k if k in ("relu", "silu", "relu6") else None


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


@dataclass
class Graph:
    """One captured graph with the indexes the matchers share."""

    index: int
    gm: torch.fx.GraphModule
    parameters: dict[str, str]  # placeholder/get_attr name -> the model's parameter or buffer name
    order: dict[Node, int] = field(default_factory=dict)
    by_kind: dict[str, list[Node]] = field(default_factory=dict)

    def param(self, node) -> str | None:
        """The parameter/buffer name behind ``node`` (a placeholder or get_attr), else None."""
        if not isinstance(node, Node):
            return None
        if node.op == "get_attr":
            return self.parameters.get(node.name, str(node.target))
        return self.parameters.get(node.name) if node.op == "placeholder" else None


@dataclass
class Candidate:
    """A matcher's proposal: the nodes of a site (graph order is restored later) and what a rewrite needs."""

    pattern: str
    nodes: list[Node]
    output: Node
    shape: dict[str, int]
    dtype: str
    roles: dict[str, str]
    written_as: str
    status: str = FUSIBLE
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    boundary: list[Node] = field(default_factory=list)  # inputs and parameters whose dtype must match the output
    anchor: Node | None = None


@dataclass
class Context:
    graph: Graph
    weight_uses: Counter  # conv weight key -> number of conv nodes (over all graphs) that read it
    weight_users: dict  # conv weight key -> names of those conv nodes, "g<i>:<node>"


def weight_key(g: Graph, weight) -> str:
    name = g.param(weight)
    return f"param:{name}" if name else f"g{g.index}:{getattr(weight, 'name', weight)}"


def node_name(node) -> str:
    return node.name if isinstance(node, Node) else ""


def add_role(roles: dict[str, str], key: str, node) -> None:
    if isinstance(node, Node):
        roles[key] = node.name


def described(g: Graph, node: Node, fallback: str) -> str:
    path, cls = module_path(node)
    return f"nn.{cls}" if cls and path else fallback


# -- activations written out as elementwise arithmetic ---------------------------------------------------------------

# Elementwise aten ops a hand-written activation is made of (GPT-2's NewGELU: mul, pow, add, tanh; erf GELU: mul,
# div, erf, add; x * sigmoid(x)).
ELEMENTWISE = frozenset({"mul", "add", "sub", "div", "pow", "tanh", "erf", "sigmoid", "neg", "exp", "rsub",
                         "sqrt", "reciprocal", "clamp", "clamp_min", "clamp_max"})
WRITTEN_MAX_NODES = 16
# The library's activations in float64, for the fingerprint.
_REFERENCES = {
    "gelu_tanh": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
    "gelu": lambda t: torch.nn.functional.gelu(t),
    "silu": torch.nn.functional.silu,
    "relu": torch.relu,
    "relu6": lambda t: torch.clamp(t, 0.0, 6.0),
}


def written_activation(x: Node) -> tuple[str, list[Node], Node] | None:
    """An activation of ``x`` written out in elementwise ops (``0.5 * x * (1 + tanh(...))``): its name, its nodes in
    graph order, and its output node; None when there is none.

    The region is the elementwise ops that read only ``x``, each other and Python scalars, and whose values are
    used by nothing outside it but one output.  What it computes is then recognised by value, not by shape: it is
    evaluated in float64 on 2001 points in [-8, 8] and compared with each activation of the library (max relative
    error 1e-6 of the activation's range), so any algebraically equal spelling matches and a near miss (QuickGELU's
    x * sigmoid(1.702 x)) does not.
    """
    region: list[Node] = []
    inside = {x}
    frontier = list(x.users)
    steps = 0
    while frontier:
        steps += 1
        if steps > 8 * WRITTEN_MAX_NODES:  # a node waiting on an input the region never reaches
            return None
        n = frontier.pop(0)
        if n in inside:
            continue
        if kind(n) not in ELEMENTWISE or n.kwargs.get("out") is not None:
            continue
        ins = [a for a in n.all_input_nodes]
        if not all(a in inside for a in ins):
            if all(a in inside or kind(a) in ELEMENTWISE for a in ins):
                frontier.append(n)  # an input is still to be reached: visit it again later
            continue
        region.append(n)
        inside.add(n)
        if len(region) > WRITTEN_MAX_NODES:
            return None
        frontier.extend(n.users)
    if not region:
        return None
    members = set(region)
    outputs = [n for n in region if any(u not in members for u in n.users) or not n.users]
    if len(outputs) != 1 or any(u not in members for u in x.users):
        return None
    out = outputs[0]
    # everything in the region must feed the output (no dangling side branch)
    feeding, stack = set(), [out]
    while stack:
        n = stack.pop()
        if n in feeding or n not in members:
            continue
        feeding.add(n)
        stack.extend(n.all_input_nodes)
    if feeding != members:
        return None
    name = _fingerprint(x, region, out)
    if name is None:
        return None
    order = {n: i for i, n in enumerate(x.graph.nodes)}
    return name, sorted(region, key=order.__getitem__), out


def _fingerprint(x: Node, region: list[Node], out: Node) -> str | None:
    probe = torch.linspace(-8.0, 8.0, 2001, dtype=torch.float64)
    values = {x: probe}
    order = {n: i for i, n in enumerate(x.graph.nodes)}
    try:
        with torch.no_grad():
            for n in sorted(region, key=order.__getitem__):
                args = torch.fx.node.map_arg(n.args, lambda a: values[a])
                kwargs = torch.fx.node.map_arg(n.kwargs, lambda a: values[a])
                kwargs = {k: v for k, v in kwargs.items() if k not in ("dtype", "layout", "device", "pin_memory")}
                values[n] = n.target(*args, **kwargs)
    except Exception:  # an op that does not take a float64 CPU tensor: not an activation we know
        return None
    got = values[out]
    if not isinstance(got, torch.Tensor) or got.shape != probe.shape:
        return None
    for name, ref in _REFERENCES.items():
        want = ref(probe)
        if torch.allclose(got, want, rtol=0.0, atol=1e-6 * float(want.abs().max())):
            return name
    return None
