"""Conv1d/Conv2d (depthwise included) followed by BatchNorm and/or an activation the family has a pattern for."""

from __future__ import annotations

from torch.fx import Node

from fxfusion.graph.capture import module_path
from fxfusion.fusions.activations import activation, title, written_activation
from fxfusion.fusions.base import Candidate, Context, add_role, weight_key
from fxfusion.fusions.conv.pattern import PATTERNS
from fxfusion.graph.nodes import arg, dtype_name, kind, node_name, only_user, op_name, shape, tensor_value

PATTERN_NAMES = frozenset(p.name for p in PATTERNS)


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
    # aten.batch_norm and the native forms alike: (input, w, b, mean, var, training, ...)
    return bool(arg(bn, 5, "training", True))


def _bn_params(bn: Node) -> dict[str, object]:
    if op_name(bn) == "_native_batch_norm_legit_no_training":
        return dict(zip(("bn_weight", "bn_bias", "running_mean", "running_var", "momentum", "eps"), bn.args[1:7]))
    return dict(zip(("bn_weight", "bn_bias", "running_mean", "running_var", "training", "momentum", "eps"),
                    bn.args[1:8]))


LAYOUT_KINDS = ("view", "flatten", "transpose")  # ops that move elements without computing: an activation commutes
LAYOUT_MAX_STEPS = 3


def _layout_chain(cur: Node) -> list[Node]:
    """The layout ops (flatten, transpose, view, ...) read one after the other from ``cur`` up to an activation, each
    the only reader of the one before; [] when no activation ends such a chain."""
    chain, node = [], cur
    for _ in range(LAYOUT_MAX_STEPS):
        nxt = only_user(node) if len(node.users) == 1 else None
        if nxt is None:
            return []
        if activation(nxt):
            return chain
        if kind(nxt) not in LAYOUT_KINDS:
            return []
        chain.append(nxt)
        node = nxt
    return []


def match_conv(ctx: Context, conv: Node) -> Candidate | None:
    """Conv1d/Conv2d (depthwise included) followed by BatchNorm and/or an activation: conv{d}d[_bn][_<act>] where the
    family has that pattern; an activation it has none for stays a separate op, with a note."""
    g = ctx.graph
    geometry = _conv_geometry(conv)
    ws, out_shape = shape(conv.args[1]), shape(conv)
    if geometry is None or ws is None or out_shape is None or len(ws) not in (3, 4):
        return None
    x, w, b, stride, padding, dilation, groups = geometry
    dims = len(ws) - 2
    nodes, roles, how = [conv], {"conv": conv.name, "input": node_name(x), "weight": node_name(w)}, []
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
            add_role(roles, key, params.get(key))
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
            reasons.append(f"conv {path or conv.name} (weight {g.param(w) or node_name(w)}) is reused on another path "
                           f"({', '.join(others)}): fxfusion does not fold BatchNorm into a shared conv's weights "
                           "(folding in place, as torch.fx's fuse does, silently changes the other path: PyTorch "
                           "issue 104593)")
        if not g.param(w):
            reasons.append(f"conv weight {node_name(w)} is computed at run time, not a parameter: BatchNorm cannot be "
                           "folded into it ahead of time")
    acts = [u for u in cur.users if activation(u)]
    between = [] if acts else _layout_chain(cur)  # SegFormer's Mix-FFN: conv, flatten, transpose, then GELU
    if between:
        acts = [only_user(between[-1])]
    base = f"conv{dims}d" + ("_bn" if bn is not None else "")
    written = written_activation(cur)
    if written is not None and len(written[1]) > 1:  # x * sigmoid(x) and the like: its sigmoid is not the activation
        notes.append(f"the {title(written[0])} after it is written out in {len(written[1])} elementwise ops; the conv "
                     "family fuses activation ops only, so it stays as written")
    elif acts:
        name = activation(acts[0])
        if f"{base}_{name}" in PATTERN_NAMES:
            act = acts[0]
            nodes.extend(between + [act])
            roles["activation"], roles["act"] = act.name, name
            how.append(title(name))
            if between:
                notes.append(f"{', '.join(op_name(n) for n in between)} between the conv and its {title(name)}: "
                             "the activation is elementwise, so the fused conv applies it first and the layout "
                             "change follows")
        else:
            notes.append(f"the {title(name)} after it has no {base}_{name} pattern in the library; it stays a "
                         "separate op")
    if bn is None and act is None:
        return None
    pattern = base + (f"_{roles['act']}" if act is not None else "")
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
