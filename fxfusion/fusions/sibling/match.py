"""Matching sibling GEMMs and gated MLPs: anchored on a GEMM, grouped by the input node it reads.

A *member* is a GEMM with a parameter weight: ``linear(x, W[, b])``, ``matmul/mm(x, t(W))`` or ``matmul(x, R)`` (then
optionally ``+ b`` with a parameter bias, when the add is the GEMM's only reader).  From an anchor, the group is every
member that reads the anchor's very input node and that no earlier site took (``Context.claimed``), in graph order,
less a repeat of an earlier member's weight (the same module called twice computes one value twice: that is common
subexpression elimination, not a wider GEMM): O(readers of x) per anchor.  The gated matcher runs first: within the
group it looks for act(gate) * up, with both projections read by nothing else; the sibling matcher then takes what is
left, two members or more (at most MAX_SIBLINGS), and leaves a lone GEMM to the linear family.

A gated MLP whose projections are pre-fused in the checkpoint (Phi-3's ``gate_up_proj``) is one member whose output
is split in two equal halves after the GEMM -- ``chunk(2, -1)``, ``split(N, -1)`` or two slices ``[..., :N]`` and
``[..., N:]`` -- then act(first half) * second half: :func:`match_gated_split`, O(readers of the GEMM's output).
It is the gated pattern's site already running as its ``merged`` variant (``Candidate.baseline_variant``): what is
left to decide is whether fusing the activation and the product (compile) pays.  Projections pre-fused and split in
2 or 3 parts along the last dim with no gated product after them (Phi-3's ``qkv_proj``) are the sibling pattern
already fused: :func:`match_split_siblings` reports them so, and nothing is rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.fx import Node

from fxfusion.fusions.activations import activation, title, written_activation
from fxfusion.fusions.base import Candidate, Context, Graph, described
from fxfusion.fusions.linear.match import bias_add_of, weight_of
from fxfusion.fusions.sibling.pattern import GATED, SIBLING_COUNTS
from fxfusion.graph.capture import module_path
from fxfusion.graph.nodes import arg, dtype_name, kind, node_name, only_user, op_name, shape, val
from fxfusion.graph.sites import ALREADY_FUSED, Flag

MAX_SIBLINGS = max(SIBLING_COUNTS)


@dataclass
class SiblingGemm:
    gemm: Node
    x: Node
    weight: Node
    tnode: Node | None  # the transpose of the weight, when only this GEMM reads it
    bias: Node | None
    bias_add: Node | None
    head: Node  # the node whose value is the member's output
    width: int

    @property
    def nodes(self) -> list[Node]:
        return [n for n in (self.tnode, self.gemm, self.bias_add) if n is not None]


def member(g: Graph, gemm: Node) -> SiblingGemm | None:
    """``gemm`` as a sibling candidate: a GEMM whose weight (and bias) are parameters; None otherwise."""
    k = kind(gemm)
    out = shape(gemm)
    if not out:
        return None
    if k == "linear":
        x, w, b = gemm.args[0], gemm.args[1], arg(gemm, 2, "bias")
        if not g.param(w) or len(shape(w) or ()) != 2 or (b is not None and not g.param(b)):
            return None
        return SiblingGemm(gemm, x, w, None, b, None, gemm, out[-1])
    if k != "matmul" or op_name(gemm) not in ("matmul", "mm"):
        return None
    found = weight_of(g, gemm.args[1])
    if found is None:
        return None
    w, tnode, _ = found
    tnode = tnode if tnode is not None and len(tnode.users) == 1 else None
    with_bias = bias_add_of(g, gemm, out[-1]) if len(gemm.users) == 1 else None
    add, b = with_bias if with_bias else (None, None)
    return SiblingGemm(gemm, gemm.args[0], w, tnode, b, add, add or gemm, out[-1])


def group(ctx: Context, anchor: Node) -> list[SiblingGemm]:
    """The unclaimed members that read the anchor's input node, in graph order (the anchor's own included)."""
    g = ctx.graph
    first = member(g, anchor)
    if first is None or not isinstance(first.x, Node) or shape(first.x) is None:
        return []
    found, weights = [], set()
    for u in sorted(first.x.users, key=g.order.__getitem__):
        m = member(g, u)
        if m is None or m.x is not first.x or any(n in ctx.claimed for n in m.nodes):
            continue
        key = (g.param(m.weight) or m.weight.name, g.param(m.bias) if m.bias is not None else None)
        if key in weights:  # the same module called twice on one input: a duplicate, not a sibling (that is CSE)
            continue
        weights.add(key)
        found.append(m)
    return found


def _module(m: SiblingGemm) -> str:
    path, _ = module_path(m.gemm)
    return path.rsplit(".", 1)[-1] if path else m.weight.name


def _rows(x: Node) -> tuple[int, int]:
    K = shape(x)[-1]
    return max(1, val(x).numel() // K) if val(x) is not None and K else 1, K


def _gate_activation(head: Node) -> tuple[str, list[Node], Node] | None:
    """act(head) for an activation of the gated patterns: (name, its nodes, its output), the head read by it alone."""
    users = [u for u in head.users]
    if len(users) == 1 and activation(users[0]) in GATED:
        return activation(users[0]), users, users[0]
    written = written_activation(head)
    return written if written is not None and written[0] in GATED else None


def gated_pair(members: list[SiblingGemm]) -> tuple[SiblingGemm, SiblingGemm, tuple, Node] | None:
    """(gate, up, activation, product) of act(gate) * up among the members, each projection read by nothing else."""
    if len(members) < 2:  # no pair: spare the search for a written-out activation (the costly part)
        return None
    by_head = {m.head: m for m in members}
    for gate in members:
        act = _gate_activation(gate.head)
        if act is None:
            continue
        mul = only_user(act[2])
        if mul is None or kind(mul) != "mul" or len(mul.args) != 2 or mul.kwargs:
            continue
        other = mul.args[1] if mul.args[0] is act[2] else mul.args[0]
        up = by_head.get(other)
        if up is not None and up is not gate and len(up.head.users) == 1 and up.width == gate.width:
            return gate, up, act, mul
    return None


def match_gated(ctx: Context, anchor: Node) -> Candidate | None:
    """act(x Wg^T) * (x Wu^T): SwiGLU / GeGLU, bias-free, the anchor being the gate or the up projection."""
    found = gated_pair(group(ctx, anchor))
    if found is None or anchor not in (found[0].gemm, found[1].gemm):
        return None
    gate, up, (name, act_nodes, act_out), mul = found
    if gate.bias is not None or up.bias is not None:
        return None  # the gated patterns are bias-free; the sibling matcher merges the two GEMMs instead (noted)
    M, K = _rows(gate.x)
    roles = {"input": node_name(gate.x), "gate": gate.gemm.name, "up": up.gemm.name, "act": name,
             "activation": act_out.name, "output": mul.name, "gate_weight": gate.weight.name,
             "up_weight": up.weight.name}
    flags = frozenset({Flag.ACT_WRITTEN}) if act_nodes != [act_out] or activation(act_out) is None else frozenset()
    for role, m in (("gate_param", gate), ("up_param", up)):
        roles[role] = ctx.graph.param(m.weight) or ""
    how = (f"{title(name)}({_module(gate)}(x)) * {_module(up)}(x)"
           + (f", the activation written out ({len(act_nodes)} ops)" if flags else ""))
    return Candidate(f"gated_mlp_{name}", gate.nodes + up.nodes + act_nodes + [mul], mul, {"M": M, "K": K,
                     "N": gate.width}, dtype_name(mul) or "float32", roles, how,
                     boundary=[gate.x, gate.weight, up.weight], flags=flags)


def _parts(head: Node) -> tuple[list[tuple[int, int, Node]], list[Node]] | None:
    """((start, end, node) per part, the split's nodes) of ``head`` split along its last dim into contiguous parts
    that cover it, by split / split_with_sizes / chunk read by a getitem per part, or by slices; None otherwise."""
    out = shape(head)
    if not out:
        return None
    last, width, users = len(out) - 1, out[-1], list(head.users)
    if len(users) == 1 and op_name(users[0]) in ("chunk", "split", "split_with_sizes"):
        split, size = users[0], users[0].args[1]
        dim = arg(split, 2, "dim", 0)
        if not isinstance(dim, int) or dim % len(out) != last:
            return None
        if op_name(split) == "chunk":
            sizes = [width // size] * size if isinstance(size, int) and size and width % size == 0 else None
        elif isinstance(size, int):
            sizes = [size] * (width // size) if size and width % size == 0 else None
        else:
            sizes = list(size) if isinstance(size, (list, tuple)) and sum(size) == width else None
        items = {u.args[1]: u for u in split.users if kind(u) == "getitem"}
        if sizes is None or set(items) != set(range(len(sizes))) or len(split.users) != len(sizes):
            return None
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [(a, a + n, items[i]) for i, (a, n) in enumerate(zip(starts, sizes))], [split, *items.values()]
    spans = []
    for u in users:
        if op_name(u) != "slice" or arg(u, 4, "step", 1) != 1:
            return None
        dim, start, end = arg(u, 1, "dim", 0), arg(u, 2, "start", None) or 0, arg(u, 3, "end", None)
        if not isinstance(dim, int) or dim % len(out) != last or not isinstance(start, int):
            return None
        spans.append((start, width if end is None or end >= width else end, u))
    spans.sort(key=lambda t: t[0])
    if not spans or spans[0][0] != 0 or spans[-1][1] != width or any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
        return None
    return spans, [u for *_, u in spans]


def _halves(head: Node) -> tuple[Node, Node, list[Node]] | None:
    """(first half, second half, the split's nodes) of ``head`` split along its last dim into two equal halves, read
    by nothing else (:func:`_parts` with two parts of one width); None otherwise."""
    found = _parts(head)
    if found is None or len(found[0]) != 2 or found[0][0][1] * 2 != found[0][1][1]:
        return None
    (_, _, first), (_, _, second) = found[0]
    return first, second, found[1]


def match_gated_split(ctx: Context, anchor: Node) -> Candidate | None:
    """act(h[..., :N]) * h[..., N:] for h = x [W_g; W_u]^T, one bias-free GEMM pre-fused in the checkpoint (Phi-3's
    ``gate_up_proj``) and split after it: the gated site, already running as the pattern's ``merged`` variant."""
    m = member(ctx.graph, anchor)
    if m is None or m.bias is not None or not isinstance(m.x, Node) or shape(m.x) is None:
        return None
    halves = _halves(m.head)
    if halves is None:
        return None
    gate, up, split_nodes = halves
    act = _gate_activation(gate)
    if act is None or len(up.users) != 1:
        return None
    name, act_nodes, act_out = act
    mul = only_user(act_out)
    if mul is None or kind(mul) != "mul" or len(mul.args) != 2 or mul.kwargs or set(mul.args) != {act_out, up}:
        return None
    M, K = _rows(m.x)
    flags = frozenset({Flag.ACT_WRITTEN}) if act_nodes != [act_out] or activation(act_out) is None else frozenset()
    roles = {"input": node_name(m.x), "gate": m.gemm.name, "up": m.gemm.name, "act": name,
             "activation": act_out.name, "output": mul.name, "gate_weight": m.weight.name,
             "up_weight": m.weight.name, "split": split_nodes[0].name,
             "gate_param": ctx.graph.param(m.weight) or "", "up_param": ctx.graph.param(m.weight) or ""}
    how = (f"{title(name)}(gate) * up, {_module(m)}(x) split in two after the GEMM ({op_name(split_nodes[0])})"
           + (f", the activation written out ({len(act_nodes)} ops)" if flags else ""))
    return Candidate(f"gated_mlp_{name}", m.nodes + split_nodes + act_nodes + [mul], mul,
                     {"M": M, "K": K, "N": m.width // 2}, dtype_name(mul) or "float32", roles, how,
                     boundary=[m.x, m.weight], flags=flags, baseline_variant="merged",
                     notes=["the gate and up projections are already one GEMM (pre-fused in the checkpoint): the "
                            "site runs as the merged variant, and what is left to fuse is the activation and the "
                            "product"])


def match_split_siblings(ctx: Context, anchor: Node) -> Candidate | None:
    """One bias-free GEMM whose output is split in 2 or 3 parts along its last dim (q/k/v pre-fused in the
    checkpoint, sliced after the GEMM): the sibling pattern already running merged, reported as already fused."""
    m = member(ctx.graph, anchor)
    if m is None or m.bias is not None or m.head is not anchor or not isinstance(m.x, Node) or shape(m.x) is None:
        return None
    found = _parts(m.head)
    if found is None or len(found[0]) not in SIBLING_COUNTS:
        return None
    parts, split_nodes = found
    M, K = _rows(m.x)
    roles = {"input": node_name(m.x), "gemm": m.gemm.name, "outputs": ",".join(u.name for *_, u in parts),
             "widths": ",".join(str(b - a) for a, b, _ in parts), "weight": ctx.graph.param(m.weight) or m.weight.name}
    how = (f"{_module(m)}(x): one GEMM for {len(parts)} projections (pre-fused in the checkpoint), split after it "
           f"({op_name(split_nodes[0])})")
    return Candidate(f"sibling_gemm{len(parts)}", m.nodes + split_nodes, parts[-1][2],
                     {"M": M, "K": K, **{f"N{i + 1}": b - a for i, (a, b, _) in enumerate(parts)}},
                     dtype_name(m.head) or "float32", roles, how, status=ALREADY_FUSED, boundary=[m.x, m.weight],
                     outputs=[u for *_, u in parts[:-1]])


def match_siblings(ctx: Context, anchor: Node) -> Candidate | None:
    """Two or more GEMMs with parameter weights that read one input node (q/k/v, gate/up): one site."""
    members = group(ctx, anchor)
    notes = []
    if len(members) > MAX_SIBLINGS:
        notes.append(f"{len(members)} GEMMs read {members[0].x.name}; the library's sibling patterns take up to "
                     f"{MAX_SIBLINGS}, so this site takes the first {MAX_SIBLINGS} and the rest are matched apart")
        members = members[:MAX_SIBLINGS]
    if len(members) < 2 or anchor not in [m.gemm for m in members]:
        return None
    biased = [m for m in members if m.bias is not None]
    if biased and len(biased) < len(members):
        bare = [_module(m) for m in members if m.bias is None]
        notes.append(f"{', '.join(bare)} {'has' if len(bare) == 1 else 'have'} no bias: zeros are concatenated for "
                     f"{'it' if len(bare) == 1 else 'them'} (adding 0 changes no value)")
    if len(members) == 2 and gated_pair(members) is not None:
        notes.append("a gated MLP with biases: the library's gated patterns are bias-free, so its projections merge "
                     "as siblings and the activation and product stay as they are")
    M, K = _rows(members[0].x)
    roles = {"input": node_name(members[0].x), "gemms": ",".join(m.gemm.name for m in members),
             "outputs": ",".join(m.head.name for m in members), "widths": ",".join(str(m.width) for m in members),
             "weights": ",".join(ctx.graph.param(m.weight) or m.weight.name for m in members)}
    if biased:
        roles["biases"] = ",".join(ctx.graph.param(m.bias) or m.bias.name if m.bias is not None else ""
                                   for m in members)
    nodes = [n for m in members for n in m.nodes]
    way = described(members[0].gemm, "F.linear" if kind(members[0].gemm) == "linear" else "x @ W.T")
    how = f"{len(members)} x {way} on one input ({', '.join(map(_module, members))})"
    shape_ = {"M": M, "K": K, **{f"N{i + 1}": m.width for i, m in enumerate(members)}}
    return Candidate(f"sibling_gemm{len(members)}" + ("_bias" if biased else ""), nodes, members[-1].head, shape_,
                     dtype_name(members[-1].head) or "float32", roles, how, notes=notes,
                     boundary=[members[0].x] + [m.weight for m in members] + [m.bias for m in biased],
                     outputs=[m.head for m in members[:-1]])
