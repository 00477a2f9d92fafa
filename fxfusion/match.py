"""Finding the pattern library's fusible sites in captured aten graphs, and checking that fusing each is legal.

Algorithm (:func:`find_sites`), for a captured model of N nodes:
  1. One pass over every graph: give each compute node its op kind (:data:`KINDS` folds aliases such as
     ``conv2d``/``convolution`` or ``softmax``/``_softmax`` into one kind), bucket nodes by kind, and count the uses
     of every conv weight across all graphs (for the shared-conv rule).
  2. Matchers run in the order of :data:`MATCHERS` (the larger pattern first: attention before linear, whose GEMMs
     it contains).  Each visits only the nodes of its anchor kinds, in graph order, and walks a bounded number of
     steps along args and users from the anchor.  A candidate that touches a node already in a site is dropped
     (its nodes stay unmatched), so sites never overlap.
  3. Legality, per candidate: every intermediate must be used only inside the site; the site's inputs, parameters
     and output must share one dtype; plus each matcher's own rules (BatchNorm in training mode, a conv weight
     shared with another conv, an active dropout).  An illegal site is kept, with its reasons, never proposed.
  4. Sites are numbered per graph in graph order; every compute node in no site is counted in ``unmatched``.
Cost: O(N + E): each node is bucketed once, and each anchor costs O(1) steps plus the uses of the nodes it takes.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch.fx import Node

from fxfusion.capture import module_path, source_line
from fxfusion.sites import ALREADY_FUSED, FUSIBLE, ILLEGAL, CapturedModel, Site

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


def _name(node) -> str:
    return node.name if isinstance(node, Node) else ""


def _role(roles: dict[str, str], key: str, node) -> None:
    if isinstance(node, Node):
        roles[key] = node.name


def _described(g: Graph, node: Node, fallback: str) -> str:
    path, cls = module_path(node)
    return f"nn.{cls}" if cls and path else fallback


# -- matchers ------------------------------------------------------------------------------------------------------

def match_sdpa(ctx: Context, node: Node) -> Candidate | None:
    """Already fused: one SDPA call (written directly, or inside nn.MultiheadAttention)."""
    q, k, v = node.args[0], node.args[1], node.args[2]
    qs, ks = shape(q), shape(k)
    out = tensor_value(node)
    if qs is None or ks is None or len(qs) < 3:
        return None
    B, H = (qs[0], qs[1]) if len(qs) == 4 else (qs[0], 1)
    roles = {"q": q.name, "k": k.name, "v": v.name, "sdpa": node.name, "output": out.name}
    _role(roles, "mask", arg(node, 3, "attn_mask"))
    causal = bool(arg(node, 5, "is_causal", False))
    path, cls = module_path(node)
    how = "nn.MultiheadAttention (SDPA)" if cls == "MultiheadAttention" else "F.scaled_dot_product_attention"
    S = qs[-2] if qs[-2] == ks[-2] else round((qs[-2] * ks[-2]) ** 0.5)
    return Candidate("sdpa", [node] + ([out] if out is not node else []), out,
                     {"B": B, "H": H, "S": S, "D": qs[-1]}, dtype_name(out) or "float32", roles,
                     how + (", causal" if causal else ""), status=ALREADY_FUSED)


def _scores_operand(node: Node) -> tuple[Node, Node] | None:
    """For an additive mask ``scores + mask``: (scores, mask), the scores being the full-shaped GEMM side."""
    a, b = node.args[0], node.args[1]
    if not (isinstance(a, Node) and isinstance(b, Node)):
        return None
    feeds = ("div", "mul", "matmul", "cast")
    if kind(a) in feeds and shape(a) == shape(node):
        return a, b
    if kind(b) in feeds and shape(b) == shape(node):
        return b, a
    return None


def match_attention(ctx: Context, softmax: Node) -> Candidate | None:
    """softmax(scale(QK^T) [+ mask]) [dropout] @ V, written by hand; the softmax dim must be the last."""
    out_shape = shape(softmax)
    if out_shape is None or len(out_shape) < 3 or arg(softmax, 1, "dim") not in (-1, len(out_shape) - 1):
        return None
    nodes, roles, how = [softmax], {"softmax": softmax.name}, []
    cur, scale, mask = softmax.args[0], None, None
    for _ in range(5):  # back from softmax to QK^T: at most a cast, a mask and a scale, in either order
        k = kind(cur)
        if k == "matmul":
            break
        if k == "cast" and len(cur.users) >= 1:
            nodes.append(cur)
            cur = cur.args[0]
        elif k in ("div", "mul") and scale is None and is_scalar(cur.args[1]) and isinstance(cur.args[0], Node):
            scale = cur
            nodes.append(cur)
            roles["scale"], roles["scale_op"] = cur.name, k
            roles["scale_value"] = str(cur.args[1].name if isinstance(cur.args[1], Node) else cur.args[1])
            how.append("/ scale" if k == "div" else "* scale")
            cur = cur.args[0]
        elif k == "add" and mask is None and (pair := _scores_operand(cur)):
            mask = cur
            nodes.append(cur)
            roles["mask_op"], roles["mask_kind"] = cur.name, "additive"
            _role(roles, "mask", pair[1])
            how.append("+ additive mask")
            cur = pair[0]
        elif k == "masked_fill" and mask is None and isinstance(cur.args[0], Node):
            mask = cur
            nodes.append(cur)
            roles["mask_op"], roles["mask_kind"] = cur.name, "masked_fill"
            _role(roles, "mask", cur.args[1])
            roles["mask_fill"] = str(cur.args[2])
            how.append("masked_fill")
            cur = cur.args[0]
        else:
            return None
    else:
        return None
    qk = cur
    if kind(qk) != "matmul":
        return None
    q, kt = qk.args[0], qk.args[1]
    qs, kts = shape(q), shape(kt)
    if qs is None or kts is None or len(qs) not in (3, 4) or len(kts) != len(qs):
        return None
    k_node = kt
    if swaps_last_two(kt):
        k_node = kt.args[0]
        if len(kt.users) == 1:
            nodes.append(kt)
    nodes.append(qk)
    roles.update({"qk": qk.name, "q": _name(q), "k": _name(k_node)})

    probs, pv, dropout = softmax, None, None
    for _ in range(3):  # forward from softmax: at most a cast and a dropout, then P @ V
        users = list(probs.users)
        nxt = [u for u in users if kind(u) == "matmul" and u.args[0] is probs]
        if nxt:
            pv = nxt[0]
            break
        step = [u for u in users if kind(u) in ("dropout", "cast")]
        if not step:
            break
        if kind(step[0]) == "dropout":
            dropout = step[0]
            roles["dropout"] = dropout.name
        nodes.append(step[0])
        probs = tensor_value(step[0])
        if probs is not step[0]:
            nodes.append(probs)
    reasons = []
    if dropout is not None and arg(dropout, 2, "train", True):
        reasons.append(f"dropout {dropout.name} is active (training mode): its random mask cannot be reproduced by "
                       "a fused kernel's own dropout")
    if pv is not None:
        nodes.append(pv)
        roles.update({"pv": pv.name, "v": _name(pv.args[1]), "output": pv.name})
        pattern = "causal_attention" if mask is not None else "full_attention"
        output = pv
    else:
        pattern, output = "qk_softmax", probs
        roles["output"] = probs.name
    B, H = (qs[0], qs[1]) if len(qs) == 4 else (qs[0], 1)
    Sq, Sk, D = qs[-2], kts[-1], qs[-1]
    notes = []
    if Sq != Sk:
        notes.append(f"queries ({Sq}) and keys ({Sk}) differ in length: decided at S={round((Sq * Sk) ** 0.5)}, "
                     "which keeps the score matrix's size")
    if scale is None:
        notes.append("no scale between QK^T and softmax (scaled elsewhere, or not at all); SDPA takes scale=1 then")
    if mask is not None and pattern == "causal_attention" and roles.get("mask_kind") == "additive":
        notes.append("an additive mask is decided as the library's masked (causal) attention pattern")
    if mask is not None and pattern == "qk_softmax":
        notes.append("the mask is part of the site; the qk_softmax pattern measures the unmasked chain")
    after = ["softmax"] + (["dropout"] if dropout is not None else []) + (["@ V"] if pv is not None else [])
    written = "hand-written attention: QK^T " + ", ".join(how[::-1] + after)  # found walking back: reversed
    return Candidate(pattern, nodes, output, {"B": B, "H": H, "S": Sq if Sq == Sk else round((Sq * Sk) ** 0.5),
                                             "D": D},
                     dtype_name(output) or "float32", roles, written, reasons=reasons, notes=notes,
                     boundary=[q, k_node] + ([pv.args[1]] if pv is not None else []))


def _conv_geometry(conv: Node) -> tuple[Node, Node, Node | None, list, object, list, int] | None:
    if op_name(conv) in ("convolution", "_convolution"):
        if conv.args[6]:  # transposed convolution: no pattern for it
            return None
        x, w, b, stride, padding, dilation, groups = (conv.args[i] for i in (0, 1, 2, 3, 4, 5, 8))
    else:
        x, w = conv.args[0], conv.args[1]
        b, stride = arg(conv, 2, "bias"), arg(conv, 3, "stride", 1)
        padding, dilation, groups = arg(conv, 4, "padding", 0), arg(conv, 5, "dilation", 1), arg(conv, 6, "groups", 1)
    return x, w, b, stride, padding, dilation, groups


def _bn_training(bn: Node) -> bool:
    name = op_name(bn)
    if name == "_native_batch_norm_legit_no_training":
        return False
    if name in ("_native_batch_norm_legit", "native_batch_norm", "_native_batch_norm_legit_functional"):
        return bool(arg(bn, 5, "training", True))
    return bool(arg(bn, 5, "training", True))  # aten.batch_norm(input, w, b, mean, var, training, ...)


def _bn_params(bn: Node) -> dict[str, object]:
    if op_name(bn) == "batch_norm":
        keys = ("bn_weight", "bn_bias", "running_mean", "running_var", "training", "momentum", "eps")
        return dict(zip(keys, bn.args[1:8]))
    if op_name(bn) == "_native_batch_norm_legit_no_training":
        return dict(zip(("bn_weight", "bn_bias", "running_mean", "running_var", "momentum", "eps"), bn.args[1:7]))
    return dict(zip(("bn_weight", "bn_bias", "running_mean", "running_var", "training", "momentum", "eps"),
                    bn.args[1:8]))


def match_conv(ctx: Context, conv: Node) -> Candidate | None:
    """Conv1d/Conv2d (depthwise included) followed by BatchNorm and/or ReLU."""
    g = ctx.graph
    geometry = _conv_geometry(conv)
    ws, out_shape = shape(conv.args[1]), shape(conv)
    if geometry is None or ws is None or out_shape is None or len(ws) not in (3, 4):
        return None
    x, w, b, stride, padding, dilation, groups = geometry
    dims = len(ws) - 2
    nodes, roles, how = [conv], {"conv": conv.name, "input": _name(x), "weight": _name(w)}, []
    path, cls = module_path(conv)
    how.append(f"nn.{cls}" if cls.startswith("Conv") else f"F.conv{dims}d")
    if path:
        roles["conv_module"] = path
    if g.param(w):
        roles["weight_param"] = g.param(w)
    if isinstance(b, Node):
        roles["conv_bias"] = b.name
        if g.param(b):
            roles["conv_bias_param"] = g.param(b)
    cur, bn, act, reasons, notes = conv, None, None, [], []
    bns = [u for u in conv.users if kind(u) == "batch_norm" and u.args[0] is conv]
    if bns:
        bn = bns[0]
        nodes.append(bn)
        cur = tensor_value(bn)
        if cur is not bn:
            nodes.append(cur)
        roles["bn"] = bn.name
        params = _bn_params(bn)
        for key in ("bn_weight", "bn_bias", "running_mean", "running_var"):
            _role(roles, key, params.get(key))
        roles["bn_eps"] = str(params.get("eps"))
        bn_path, bn_cls = module_path(bn)
        if bn_path:
            roles["bn_module"] = bn_path
        how.append(f"nn.{bn_cls}" if bn_cls.startswith("BatchNorm") else "F.batch_norm")
        if _bn_training(bn) or not isinstance(params.get("running_mean"), Node):
            reasons.append(f"BatchNorm {bn_path or bn.name} normalises with batch statistics (training mode or "
                           "track_running_stats=False): folding needs fixed running statistics")
        key = weight_key(g, w)
        if ctx.weight_uses[key] > 1:
            others = [n for n in ctx.weight_users[key] if n != f"g{g.index}:{conv.name}"]
            reasons.append(f"conv {path or conv.name} (weight {g.param(w) or _name(w)}) is reused on another path "
                           f"({', '.join(others)}): folding BatchNorm into its weights would silently change that "
                           "path too (PyTorch issue 104593)")
        if not g.param(w):
            reasons.append(f"conv weight {_name(w)} is computed at run time, not a parameter: BatchNorm cannot be "
                           "folded into it ahead of time")
    acts = [u for u in cur.users if activation(u)]
    if acts:
        name = activation(acts[0])
        if name == "relu":
            act = acts[0]
            nodes.append(act)
            roles["activation"], roles["act"] = act.name, name
            how.append("ReLU")
        else:
            notes.append(f"the {ACT_TITLES[name]} after it has no conv+{ACT_TITLES[name]} pattern in the library; "
                         "it stays a separate op")
    if bn is None and act is None:
        return None
    pattern = f"conv{dims}d" + ("_bn" if bn is not None else "") + ("_relu" if act is not None else "")
    k = max(ws[2:])
    shape_d = {"B": out_shape[0] if len(out_shape) == dims + 2 else 1, "Cin": ws[1] * int(groups),
               "Cout": ws[0]}
    spatial = out_shape[-dims:]
    shape_d.update({"H": spatial[0], "W": spatial[1]} if dims == 2 else {"L": spatial[0]})
    shape_d.update({"k": k, "G": int(groups)})
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else [v] * dims  # noqa: E731
    same = padding == "same" or as_list(padding) == [s // 2 for s in ws[2:]]
    if as_list(stride) != [1] * dims or as_list(dilation) != [1] * dims or len(set(ws[2:])) > 1 or not same:
        notes.append(f"stride {as_list(stride)}, padding {padding}, dilation {as_list(dilation)}, kernel "
                     f"{list(ws[2:])}: decided as the library's stride-1 'same' {k}-wide conv at this output size")
    if int(groups) > 1 and int(groups) == shape_d["Cin"]:
        how[0] += " (depthwise)"
    roles["output"] = (act or cur).name
    return Candidate(pattern, nodes, act or cur, shape_d, dtype_name(act or cur) or "float32", roles,
                     " + ".join(how), reasons=reasons, notes=notes,
                     boundary=[x, w] + ([b] if isinstance(b, Node) else []))


def _weight_of(g: Graph, node) -> tuple[Node, Node | None, bool] | None:
    """For a GEMM's right operand: (weight, transpose node or None, weight is (N, K)); None if not a parameter."""
    if not isinstance(node, Node):
        return None
    if swaps_last_two(node) and g.param(node.args[0]) and len(shape(node.args[0]) or ()) == 2:
        return node.args[0], node, True
    if g.param(node) and len(shape(node) or ()) == 2:
        return node, None, False
    return None


def _bias_add(g: Graph, node: Node, n_out: int) -> tuple[Node, Node] | None:
    """A user of ``node`` that adds a 1-D parameter of length N: (add node, bias)."""
    for u in node.users:
        if kind(u) == "add" and len(u.args) == 2 and not u.kwargs.get("alpha"):
            other = u.args[1] if u.args[0] is node else u.args[0]
            if isinstance(other, Node) and g.param(other) and shape(other) == (n_out,):
                return u, other
    return None


def match_linear(ctx: Context, gemm: Node) -> Candidate | None:
    """A GEMM with a parameter weight, its bias (in the GEMM or a separate add), then optionally an activation."""
    g = ctx.graph
    k = kind(gemm)
    nodes, roles, notes = [gemm], {"gemm": gemm.name}, []
    bias, bias_add, bias_in_gemm = None, None, False
    if k == "linear":
        x, weight, tnode, bias = gemm.args[0], gemm.args[1], None, arg(gemm, 2, "bias")
        bias_in_gemm = isinstance(bias, Node)
        path, cls = module_path(gemm)
        how = "nn.Linear" if cls == "Linear" else "F.linear"
    elif k == "addmm":
        if arg(gemm, 3, "beta", 1) != 1 or arg(gemm, 4, "alpha", 1) != 1:
            return None
        bias, x = gemm.args[0], gemm.args[1]
        found = _weight_of(g, gemm.args[2])
        if found is None or shape(bias) not in ((shape(gemm)[-1],), (1, shape(gemm)[-1])):
            return None
        weight, tnode, _ = found
        bias_in_gemm, how = True, "torch.addmm"
        path, cls = module_path(gemm)
        how = "nn.Linear" if cls == "Linear" else how
    else:
        x = gemm.args[0]
        found = _weight_of(g, gemm.args[1])
        if found is None:
            return None
        weight, tnode, _ = found
        how = "x @ W.T" if tnode is not None else "x @ W"
    if tnode is not None and len(tnode.users) == 1:
        nodes.append(tnode)
    ws, xs, out_shape = shape(weight), shape(x), shape(gemm)
    if ws is None or xs is None or out_shape is None:
        return None
    n_out = out_shape[-1]
    if kind(x) == "view" and len(x.users) == 1 and shape(x.args[0]) and shape(x.args[0])[-1] == xs[-1]:
        nodes.append(x)  # the flatten in front of a 2-D addmm written for a 3-D input
        x = x.args[0]
    cur = gemm
    view = only_user(cur) if k != "linear" and len(out_shape) == 2 else None
    if view is not None and kind(view) == "view" and shape(view) and shape(view)[-1] == n_out:
        nodes.append(view)
        cur = view
    if not bias_in_gemm:
        found_bias = _bias_add(g, cur, n_out)
        if found_bias is None:
            return None  # a GEMM without a bias: no linear pattern in the library
        bias_add, bias = found_bias
        nodes.append(bias_add)
        cur = bias_add
        how += " + b" if k != "linear" else "(x, W) + b"
    act = None
    acts = [u for u in cur.users if activation(u)]
    casts = [u for u in cur.users if kind(u) == "cast"]
    if not acts and casts and len(casts[0].users) == 1 and activation(only_user(casts[0])):
        nodes.append(casts[0])  # linear -> .float() -> activation: the dtype rule decides whether it is legal
        cur, acts = casts[0], [only_user(casts[0])]
    if acts:
        act = acts[0]
        nodes.append(act)
        name = activation(act)
        roles["activation"], roles["act"] = act.name, name
        how += f" + {ACT_TITLES[name]}"
    if not isinstance(bias, Node):
        return None
    out = act or cur
    roles.update({"input": _name(x), "weight": weight.name, "bias": bias.name, "output": out.name,
                  "bias_in_gemm": "true" if bias_in_gemm else "false"})
    if g.param(weight):
        roles["weight_param"] = g.param(weight)
    if g.param(bias):
        roles["bias_param"] = g.param(bias)
    if bias_add is not None:
        roles["bias_add"] = bias_add.name
    lin_path, _ = module_path(gemm)
    if lin_path:
        roles["module"] = lin_path
    K = xs[-1]
    M = max(1, (val(x).numel() // K) if val(x) is not None and K else 1)
    pattern = "linear_bias" + (f"_{roles['act']}" if act is not None else "")
    status = ALREADY_FUSED if bias_in_gemm and act is None else FUSIBLE
    if bias_in_gemm and act is not None:
        notes.append("the bias is already in the GEMM; the gain left is the activation in its epilogue")
    return Candidate(pattern, nodes, out, {"M": M, "K": K, "N": n_out}, dtype_name(out) or "float32", roles, how,
                     status=status, notes=notes, boundary=[x, weight, bias])


def match_rmsnorm_written(ctx: Context, rsqrt: Node) -> Candidate | None:
    """x * rsqrt(mean(x^2, -1, keepdim) + eps) [cast back] [* weight], as gpt-fast and LLaMA write it."""
    g = ctx.graph
    add = rsqrt.args[0]
    if kind(add) != "add" or not isinstance(add.args[0], Node) or not is_scalar(add.args[1]):
        return None
    mean = add.args[0]
    if kind(mean) != "mean" or list(arg(mean, 1, "dim", [])) not in ([-1], [len(shape(mean) or (0,)) - 1]):
        return None
    sq = mean.args[0]
    if kind(sq) == "pow" and sq.args[1] == 2:
        x = sq.args[0]
    elif kind(sq) == "mul" and sq.args[0] is sq.args[1]:
        x = sq.args[0]
    else:
        return None
    muls = [u for u in rsqrt.users if kind(u) == "mul" and x in u.args]
    if not muls:
        return None
    normed = muls[0]
    nodes = [sq, mean, add, rsqrt, normed]
    roles = {"input": _name(x), "eps": str(add.args[1]), "rsqrt": rsqrt.name}
    cur, weight = normed, None
    nxt = only_user(cur)
    if nxt is not None and kind(nxt) == "cast":
        nodes.append(nxt)
        cur = nxt
    for u in cur.users:
        if kind(u) == "mul":
            other = u.args[1] if u.args[0] is cur else u.args[0]
            if isinstance(other, Node) and g.param(other) and shape(other) == (shape(cur) or (0,))[-1:]:
                weight = other
                nodes.append(u)
                cur = u
                break
    source = x
    if kind(x) == "cast" and isinstance(x.args[0], Node) and set(x.users) <= set(nodes):
        source = x.args[0]  # x.float() in front, read only by the norm: part of the site
        nodes.insert(0, x)
    roles.update({"input": _name(source), "output": cur.name})
    notes = [] if weight is not None else ["no weight multiply after the normalisation"]
    _role(roles, "weight", weight)
    if weight is not None and g.param(weight):
        roles["weight_param"] = g.param(weight)
    xs = shape(source) or shape(x)
    N = xs[-1]
    M = max(1, val(source).numel() // N) if val(source) is not None else 1
    return Candidate("rmsnorm", nodes, cur, {"M": M, "N": N}, dtype_name(cur) or "float32", roles,
                     "RMSNorm written out: x * rsqrt(mean(x^2) + eps) * w", notes=notes,
                     boundary=[source] + ([weight] if weight is not None else []))


def match_rms_norm_op(ctx: Context, node: Node) -> Candidate | None:
    """Already fused: one rms_norm op (nn.RMSNorm, F.rms_norm)."""
    xs, out = shape(node.args[0]), tensor_value(node)
    if xs is None:
        return None
    N = xs[-1]
    path, cls = module_path(node)
    roles = {"input": node.args[0].name, "rms_norm": node.name, "output": out.name}
    _role(roles, "weight", arg(node, 2, "weight"))
    return Candidate("rmsnorm", [node] + ([out] if out is not node else []), out,
                     {"M": max(1, val(node.args[0]).numel() // N), "N": N}, dtype_name(out) or "float32", roles,
                     "nn.RMSNorm" if cls == "RMSNorm" else "F.rms_norm", status=ALREADY_FUSED)


def match_add_layernorm(ctx: Context, ln: Node) -> Candidate | None:
    """LayerNorm(x + residual) over the last dim: the residual add in front of a LayerNorm."""
    add = ln.args[0]
    if kind(add) != "add" or len(add.args) != 2 or not all(isinstance(a, Node) for a in add.args):
        return None
    if add.kwargs.get("alpha", 1) != 1 or shape(add.args[0]) != shape(add) or shape(add.args[1]) != shape(add):
        return None
    normalized = arg(ln, 1, "normalized_shape")
    xs = shape(add)
    if xs is None or list(normalized or []) != [xs[-1]]:
        return None
    out = tensor_value(ln)
    nodes = [add, ln] + ([out] if out is not ln else [])
    roles = {"x": add.args[0].name, "residual": add.args[1].name, "add": add.name, "layer_norm": ln.name,
             "output": out.name, "eps": str(arg(ln, 4, "eps", 1e-5))}
    _role(roles, "weight", arg(ln, 2, "weight"))
    _role(roles, "bias", arg(ln, 3, "bias"))
    path, _ = module_path(ln)
    if path:
        roles["module"] = path
    N = xs[-1]
    boundary = [add.args[0], add.args[1]] + [a for a in (arg(ln, 2, "weight"), arg(ln, 3, "bias")) if a is not None]
    return Candidate("add_layernorm", nodes, out, {"M": max(1, val(add).numel() // N), "N": N},
                     dtype_name(out) or "float32", roles, "x + residual, then " + _described(ctx.graph, ln,
                                                                                          "F.layer_norm"),
                     boundary=boundary)


@dataclass(frozen=True)
class Matcher:
    family: str
    anchors: tuple[str, ...]  # op kinds a match starts from
    match: Callable[[Context, Node], Candidate | None]


# Order matters: a larger pattern claims its nodes before a smaller one can (attention's GEMMs are not linears).
MATCHERS: tuple[Matcher, ...] = (
    # Legal as is: SDPA is already one fused kernel; reported, never rewritten.
    Matcher("attention", ("sdpa",), match_sdpa),
    # Legal when the scores and probabilities are read by nothing else: SDPA never materialises them.
    Matcher("attention", ("softmax",), match_attention),
    # Legal when BN uses running statistics and the conv weight is this site's alone: folding rewrites the weight.
    Matcher("conv", ("conv",), match_conv),
    # Legal when the GEMM's output is read only by the bias add / activation that the epilogue absorbs.
    Matcher("linear", ("linear", "addmm", "matmul"), match_linear),
    # Legal when the squared/mean/rsqrt temporaries are read by nothing else: F.rms_norm never writes them.
    Matcher("norm", ("rsqrt",), match_rmsnorm_written),
    Matcher("norm", ("rms_norm",), match_rms_norm_op),
    # Legal when the sum is read only by the LayerNorm: the fused kernel does not write the sum out.
    Matcher("norm", ("layer_norm",), match_add_layernorm),
)


# -- legality and assembly ---------------------------------------------------------------------------------------

def _intermediate_reasons(c: Candidate) -> list[str]:
    inside = set(c.nodes)
    reasons = []
    for n in c.nodes:
        if n is c.output:
            continue
        outside = [u for u in n.users if u not in inside]
        if outside:
            names = ", ".join(sorted(u.name for u in outside)[:3]) + (" ..." if len(outside) > 3 else "")
            reasons.append(f"intermediate {n.name} ({op_name(n)}) is also used by {names} outside the site: "
                           "a fused kernel would not produce it")
    return reasons


def _dtype_reasons(c: Candidate) -> list[str]:
    named = [(n, dtype_name(n)) for n in c.boundary + [c.output] if isinstance(n, Node)]
    floating = [(n, d) for n, d in named if d is not None and val(n) is not None and val(n).is_floating_point()]
    if len({d for _, d in floating}) <= 1:
        return []
    listed = ", ".join(f"{n.name} {d}" for n, d in floating)
    return [f"mismatched dtypes ({listed}): the fused variants compute in one dtype"]


def _graph_index(captured: CapturedModel) -> tuple[list[Graph], Counter, dict]:
    graphs, uses, users = [], Counter(), {}
    for gi, gm in enumerate(captured.graphs):
        params = captured.parameters[gi] if gi < len(captured.parameters) else {}
        g = Graph(gi, gm, params)
        for i, node in enumerate(gm.graph.nodes):
            g.order[node] = i
            k = kind(node)
            if k is None:
                continue
            g.by_kind.setdefault(k, []).append(node)
            if k == "conv" and len(node.args) > 1:
                key = weight_key(g, node.args[1])
                uses[key] += 1
                users.setdefault(key, []).append(f"g{gi}:{node.name}")
        graphs.append(g)
    return graphs, uses, users


def _site(g: Graph, c: Candidate) -> Site:
    checks = [u for n in c.nodes if n is not c.output for u in n.users if op_name(u) in ASSERT_OPS]
    c.nodes.extend(u for u in checks if u not in c.nodes)
    nodes = sorted(set(c.nodes), key=g.order.__getitem__)
    status, reasons = c.status, list(c.reasons)
    if status != ALREADY_FUSED:
        reasons += _intermediate_reasons(c) + _dtype_reasons(c)
        status = ILLEGAL if reasons else FUSIBLE
    anchor = c.anchor or nodes[0]
    path, cls = module_path(anchor)
    where = source_line(anchor)
    source = " ".join(p for p in (f"{path} ({cls})" if path else "", f"at {where}" if where else "") if p)
    return Site(id="", pattern=c.pattern, graph_index=g.index, nodes=[n.name for n in nodes], shape=dict(c.shape),
                dtype=c.dtype, status=status, reasons=reasons, roles=dict(c.roles), written_as=c.written_as,
                source=source, notes=list(c.notes))


def find_sites(captured: CapturedModel) -> list[Site]:
    """Every site of the pattern library in the captured graphs; fills ``captured.unmatched``.  O(nodes + uses)."""
    graphs, uses, users = _graph_index(captured)
    sites: list[Site] = []
    unmatched: Counter = Counter()
    for g in graphs:
        ctx = Context(g, uses, users)
        claimed: set[Node] = set()
        found: list[tuple[int, Site]] = []
        for matcher in MATCHERS:
            for kind_name in matcher.anchors:
                for node in g.by_kind.get(kind_name, ()):
                    if node in claimed:
                        continue
                    c = matcher.match(ctx, node)
                    if c is None or any(n in claimed for n in c.nodes):
                        continue
                    c.anchor = node
                    site = _site(g, c)  # may take the export checks of its intermediates along
                    claimed.update(c.nodes)
                    found.append((min(g.order[n] for n in c.nodes), site))
        found.sort(key=lambda pair: pair[0])
        for i, (_, site) in enumerate(found):
            site.id = f"g{g.index}.s{i}"
            sites.append(site)
        for node in g.gm.graph.nodes:
            if node.op == "call_function" and node not in claimed:
                unmatched["getitem" if node.target is operator.getitem else str(node.target)] += 1
    captured.unmatched = dict(sorted(unmatched.items(), key=lambda kv: (-kv[1], kv[0])))
    return sites
