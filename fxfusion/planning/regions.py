"""A fusion group's region of a captured graph: which nodes it takes (:func:`region_nodes`), the region cut out as a
GraphModule of its own (:func:`cut_region`), a key two regions share when they are the same work
(:func:`region_key`), and a copy of a region in channels-last layout (:func:`channels_last_copy`) --
what :mod:`fxfusion.planning.insitu` times inside the model."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from fxfusion.graph.edit import attribute, bind_constants, bound_constants, bound_names, is_pure
from fxfusion.planning.rewrite import rewrite_group


class RegionError(Exception):
    """The region cannot be cut out or rewritten on its own (its prediction falls back to the library's)."""


# Ops that only rearrange a value: a rewrite can change what they cost downstream of the site (SDPA returns its
# output in a layout where ``transpose(1, 2).contiguous()`` copies nothing), so the region takes a few along.
LAYOUT_OPS = {"view", "_unsafe_view", "reshape", "transpose", "permute", "t", "clone", "contiguous", "expand",
              "alias", "squeeze", "unsqueeze", "flatten"}
DOWNSTREAM_LIMIT = 4


def _layout_tail(node: fx.Node) -> list[fx.Node]:
    """The chain of single-user layout ops that follows ``node`` (at most DOWNSTREAM_LIMIT)."""
    tail = []
    while len(tail) < DOWNSTREAM_LIMIT and len(node.users) == 1:
        (user,) = node.users
        target = getattr(user.target, "_overloadpacket", None)
        if user.op != "call_function" or getattr(target, "__name__", None) not in LAYOUT_OPS:
            break
        if any(a is not node and a.op not in ("get_attr", "placeholder") for a in user.all_input_nodes):
            break
        tail.append(user)
        node = user
    return tail


# How many pure feeders of a site the trial rewrite looks at (what the rewrite can free lies within them).
FEEDER_LIMIT = 64


def region_nodes(gm: fx.GraphModule, group, index: dict | None = None,
                 by_name: dict | None = None) -> tuple[list[fx.Node], list[str]]:
    """The group's nodes, every node the group's rewrite erases with them (a causal mask, views only the site read)
    and the layout ops right after the site's output, in graph order; and the names of the erased extra nodes.

    What the rewrite erases is found by rewriting a trial copy of the site's neighbourhood: its nodes and their pure
    feeders (constants included, at most FEEDER_LIMIT), cut out with every value used elsewhere as an output -- so a
    feeder with a user outside is kept exactly as it would be in the whole graph, and the trial costs the size of
    the neighbourhood, not of the graph.  ``index`` (node -> position) and ``by_name`` (name -> node), when a caller
    asks for many groups of one graph, save recomputing them for each."""

    index = index if index is not None else {n: i for i, n in enumerate(gm.graph.nodes)}
    by_name = by_name if by_name is not None else {n.name: n for n in index}
    missing = [name for name in group.nodes if name not in by_name]
    if missing:
        raise RegionError(f"nodes {', '.join(missing)} are not in the graph")
    mine = {by_name[name] for name in group.nodes}
    near, stack = set(mine), [a for n in mine for a in n.all_input_nodes]
    while stack and len(near) < len(mine) + FEEDER_LIMIT:
        a = stack.pop()
        if a not in near and (a.op == "get_attr" or is_pure(a)):
            near.add(a)
            stack.extend(a.all_input_nodes)
    ordered = sorted(near, key=index.__getitem__)
    trial, _ = cut_region(gm, ordered)
    record = rewrite_group(trial, group, recompile=False)
    if not record.applied:
        raise RegionError(f"the rewrite does not apply: {record.detail}")
    after = {n.name for n in trial.graph.nodes}
    released = [n.name for n in ordered if n.name not in after and n not in mine and n.op != "get_attr"]
    gone = mine | {by_name[name] for name in released}
    outputs = [n for n in mine if any(u not in gone for u in n.users)]
    tail = {t for out in outputs for t in _layout_tail(out)}
    return sorted(gone | tail, key=index.__getitem__), released


def cut_region(gm: fx.GraphModule, nodes: list[fx.Node]) -> tuple[fx.GraphModule, list[str]]:
    """A GraphModule of ``nodes`` alone: inputs computed elsewhere become placeholders (same names), module
    constants stay get_attr (rewrites read them), values used outside the region are its outputs."""
    inside = set(nodes)
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    inputs: list[str] = []
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in inside and a not in env and a.op != "get_attr":
                env[a] = g.placeholder(a.name)
                env[a].meta = dict(a.meta)
                inputs.append(a.name)
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in inside and a not in env:  # a constant of the module
                env[a] = g.get_attr(a.target)
                env[a].meta = dict(a.meta)
        env[n] = g.node_copy(n, lambda a: env[a])
    outputs = [env[n] for n in nodes if any(u not in inside for u in n.users)]
    if not outputs:
        raise RegionError("the region has no output used by the rest of the graph")
    g.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
    region = fx.GraphModule(gm, g)
    bind_constants(region, bound_constants(gm), bound_names(gm))
    return region, inputs


class _Unkeyable(Exception):
    pass


def _describe(value: Any) -> str:
    """A value as far as its cost goes: a tensor by shape, strides, dtype and device (not its contents)."""
    if isinstance(value, torch.Tensor):
        return f"T{tuple(value.shape)}{value.stride()}{value.dtype}{value.device}"
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_describe(v) for v in value) + ")"
    if value is None or isinstance(value, (bool, int, float, str, slice, torch.dtype, torch.device, torch.layout,
                                           torch.memory_format)):
        return repr(value)
    raise _Unkeyable(type(value).__name__)


def _graph_key(gm: fx.GraphModule, args: tuple) -> str:
    number: dict[fx.Node, int] = {}
    values = iter(args)  # one per placeholder, in order: the region is called with them

    def ref(a: Any) -> str:
        if isinstance(a, fx.Node):
            return f"%{number[a]}"
        if isinstance(a, (list, tuple)):
            return "(" + ",".join(ref(x) for x in a) + ")"
        if isinstance(a, dict):
            return "{" + ",".join(f"{k}={ref(v)}" for k, v in sorted(a.items())) + "}"
        return _describe(a)

    parts = []
    for i, n in enumerate(gm.graph.nodes):
        number[n] = i
        if n.op == "placeholder":
            parts.append("in " + _describe(next(values)))
        elif n.op == "get_attr":
            parts.append("const " + _describe(attribute(gm, n.target)))
        elif n.op in ("call_function", "call_method"):
            parts.append(f"{n.op} {n.target} {ref(n.args)} {ref(n.kwargs)}")
        elif n.op == "output":
            parts.append("out " + ref(n.args))
        else:  # a submodule: its code is not in the graph
            raise _Unkeyable(n.op)
    return "\n".join(parts)


def region_key(region: fx.GraphModule, rewritten: fx.GraphModule, args: tuple) -> str | None:
    """A key two groups share exactly when their regions would time alike: the same ops, in the same order, on
    inputs and constants of the same shapes, strides, dtypes and devices, and rewritten to the same ops (the values
    themselves do not enter: timing does not depend on them).  None where a value cannot be so described."""
    try:
        return _graph_key(region, args) + "\n=>\n" + _graph_key(rewritten, args)
    except (_Unkeyable, StopIteration, AttributeError, KeyError):
        return None


def channels_last_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() == 4 and value.is_floating_point():
        return value.contiguous(memory_format=torch.channels_last)
    return value


def channels_last_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm``'s graph over copies of its 4-D floating constants in channels-last layout (as ``model.to(memory_format=
    torch.channels_last)`` makes a model's weights); ``gm`` and the model's tensors are left as they are."""
    values = {n.target: channels_last_value(attribute(gm, n.target)) for n in gm.graph.nodes if n.op == "get_attr"}
    return fx.GraphModule(values, gm.graph)
