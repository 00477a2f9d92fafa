"""Linear: a GEMM with a parameter weight, its bias (in the GEMM or a separate add), then an optional activation;
or a GEMM without a bias followed by an activation (``linear_<act>``)."""

from __future__ import annotations

from torch.fx import Node

from fxfusion.graph.capture import module_path
from fxfusion.fusions.activations import title, activation, written_activation
from fxfusion.fusions.base import Candidate, Context, Graph
from fxfusion.fusions.linear.pattern import PATTERNS
from fxfusion.graph.nodes import arg, dtype_name, kind, node_name, only_user, shape, swaps_last_two, val
from fxfusion.graph.sites import ALREADY_FUSED, FUSIBLE, Flag

# The activations this family has a linear_bias_<act> (and bias-free linear_<act>) pattern for; any other one after
# a linear stays a separate op.
LINEAR_ACTIVATIONS = frozenset(p.name.removeprefix("linear_bias_") for p in PATTERNS
                               if p.name.startswith("linear_bias_"))


def _ours(name: str | None, notes: list[str]) -> bool:
    """Whether the family has a pattern for activation ``name``; says so in ``notes`` when it has none."""
    if name is not None and name not in LINEAR_ACTIVATIONS:
        notes.append(f"the {title(name)} after it has no linear+{title(name)} pattern in the library; it stays a "
                     "separate op")
    return name in LINEAR_ACTIVATIONS


def weight_of(g: Graph, node) -> tuple[Node, Node | None, bool] | None:
    """For a GEMM's right operand: (weight, transpose node or None, weight is (N, K)); None if not a parameter."""
    if not isinstance(node, Node):
        return None
    if swaps_last_two(node) and g.param(node.args[0]) and len(shape(node.args[0]) or ()) == 2:
        return node.args[0], node, True
    if g.param(node) and len(shape(node) or ()) == 2:
        return node, None, False
    return None


def bias_add_of(g: Graph, node: Node, n_out: int) -> tuple[Node, Node] | None:
    """A user of ``node`` that adds a 1-D parameter of length N: (add node, bias)."""
    for u in node.users:
        if kind(u) == "add" and len(u.args) == 2 and not u.kwargs.get("alpha"):
            other = u.args[1] if u.args[0] is node else u.args[0]
            if isinstance(other, Node) and g.param(other) and shape(other) == (n_out,):
                return u, other
    return None


def match_linear(ctx: Context, gemm: Node) -> Candidate | None:
    """A GEMM with a parameter weight, its bias (in the GEMM or a separate add), then optionally an activation; a
    GEMM without a bias is a site only when an activation follows it (its epilogue can take the activation)."""
    g = ctx.graph
    k = kind(gemm)
    nodes, roles, notes, flags = [gemm], {"gemm": gemm.name}, [], set()
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
        found = weight_of(g, gemm.args[2])
        if found is None or shape(bias) not in ((shape(gemm)[-1],), (1, shape(gemm)[-1])):
            return None
        weight, tnode, _ = found
        bias_in_gemm, how = True, "torch.addmm"
        path, cls = module_path(gemm)
        how = "nn.Linear" if cls == "Linear" else how
    else:
        x = gemm.args[0]
        found = weight_of(g, gemm.args[1])
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
        found_bias = bias_add_of(g, cur, n_out)
        if found_bias is not None:
            bias_add, bias = found_bias
            nodes.append(bias_add)
            cur = bias_add
            how += " + b" if k != "linear" else "(x, W) + b"
        else:  # a GEMM without a bias: a site only with an activation to put in its epilogue (linear_<act>)
            how += " (no bias)"
    act = None
    acts = [u for u in cur.users if activation(u) in LINEAR_ACTIVATIONS]
    casts = [u for u in cur.users if kind(u) == "cast"]
    if not acts and casts and len(casts[0].users) == 1 and activation(only_user(casts[0])) in LINEAR_ACTIVATIONS:
        nodes.append(casts[0])  # linear -> .float() -> activation: the dtype rule decides whether it is legal
        cur, acts = casts[0], [only_user(casts[0])]
    written = None
    if not acts:  # an activation written out in elementwise ops, or one the family has no pattern for (a note)
        written = written_activation(cur)
        if written is None:
            others = [activation(u) for u in cur.users if activation(u)]
            _ours(others[0] if others else None, notes)
        elif not _ours(written[0], notes):
            written = None
    if acts:
        act = acts[0]
        nodes.append(act)
        name = activation(act)
        roles["activation"], roles["act"] = act.name, name
        how += f" + {title(name)}"
    elif written is not None:  # e.g. GPT-2's NewGELU: 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))
        name, act_nodes, act = written
        nodes.extend(act_nodes)
        roles["activation"], roles["act"] = act.name, name
        flags.add(Flag.ACT_WRITTEN)
        how += f" + {title(name)} written out ({len(act_nodes)} ops)"
    if bias is None and act is None:
        return None  # a GEMM alone: nothing to fuse into it (its input may still merge with siblings')
    if bias is not None and not isinstance(bias, Node):
        return None
    out = act or cur
    roles.update({"input": node_name(x), "weight": weight.name, "output": out.name})
    if bias is not None:
        roles["bias"] = bias.name
    if g.param(weight):
        roles["weight_param"] = g.param(weight)
    if bias is not None and g.param(bias):
        roles["bias_param"] = g.param(bias)
    if bias_add is not None:
        roles["bias_add"] = bias_add.name
    lin_path, _ = module_path(gemm)
    if lin_path:
        roles["module"] = lin_path
    K = xs[-1]
    M = max(1, (val(x).numel() // K) if val(x) is not None and K else 1)
    pattern = "linear" + ("_bias" if bias is not None else "") + (f"_{roles['act']}" if act is not None else "")
    status = ALREADY_FUSED if bias_in_gemm and act is None else FUSIBLE
    if bias_in_gemm and act is not None:
        notes.append("the bias is already in the GEMM; the gain left is the activation in its epilogue")
    return Candidate(pattern, nodes, out, {"M": M, "K": K, "N": n_out}, dtype_name(out) or "float32", roles, how,
                     status=status, notes=notes, boundary=[n for n in (x, weight, bias) if n is not None],
                     flags=frozenset(flags),
                     # with its bias already in the GEMM (nn.Linear, F.linear, torch.addmm) it runs like addmm
                     baseline_variant="addmm" if bias_in_gemm else "eager")
