"""Sibling GEMMs -- linears that read the very same input -- as one GEMM on weights concatenated at rewrite time
("at load", as gpt-fast's ``wqkv`` and vLLM's merged gate_up projection do by hand), sliced back into each sibling's
output; and the gated MLP ``act(x W_gate^T) * (x W_up^T)`` with its two GEMMs merged the same way.

The fused computations are written once (:func:`siblings`, :func:`gated`): the patterns' ``merged`` variants call
them to be measured, the rewrites trace them into the graph (:func:`fxfusion.graph.edit.emit_traced`).

Legality, checked here before anything is inserted:
  * every sibling reads the very same input node (one GEMM reads it once);
  * every weight and bias is a constant of the module: the concatenation is made once, as a new buffer; the original
    parameters stay as they were, so any other reader of them is unchanged;
  * the weights share one dtype and one K (concatenating must not convert any value);
  * a sibling without a bias among siblings with one gets a zero bias: x W^T + 0 is exactly x W^T, so mixed groups
    merge (a bias-free gated MLP has no bias at all);
  * the siblings' outputs may be read anywhere: each is recreated as a slice of the merged output, a strided view.
    A reader that needs contiguous memory (a ``view`` that cannot be expressed on the slice's strides) is given a
    contiguous copy of its slice -- the write a separate GEMM would have made anyway.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from fxfusion.fusions.activations import ACTIVATIONS, activation
from fxfusion.fusions.linear.rewrite import is_matrix_transpose
from fxfusion.graph.sites import Flag
from fxfusion.graph.edit import NotApplicable, add_constant, arg, aten, constant, emit_traced, is_call, value_of

SIBLING_GEMMS = (aten.linear.default, aten.matmul.default, aten.mm.default)
VIEWS_NEEDING_STRIDES = (aten.view.default, aten._unsafe_view.default)


# -- the fused computations: measured as the patterns' variants, traced into graphs by the rewrites ------------------

def merged_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """One GEMM for all siblings.  x (..., K), weight (N1+...+Ng, K), bias (N1+...+Ng) or None -> (..., N1+...+Ng)."""
    return F.linear(x, weight, bias)


def part(y: torch.Tensor, start: int, width: int) -> torch.Tensor:
    """One sibling's columns of the merged output: a view, no copy."""
    return y[..., start:start + width]


def spans(widths) -> list[tuple[int, int]]:
    """(start, width) of each sibling's columns in the merged output."""
    starts = [sum(widths[:i]) for i in range(len(widths))]
    return list(zip(starts, widths))


def siblings(x, weight, bias, widths) -> tuple[torch.Tensor, ...]:
    """Every sibling's output from one GEMM on the concatenated weights."""
    y = merged_linear(x, weight, bias)
    return tuple(part(y, s, n) for s, n in spans(widths))


def gated(x: torch.Tensor, weight: torch.Tensor, act: str, width: int) -> torch.Tensor:
    """act(x W_gate^T) * (x W_up^T) from one GEMM on weight = [W_gate; W_up] (2N, K) -> (..., N)."""
    y = merged_linear(x, weight)
    return ACTIVATIONS[act].fn(part(y, 0, width)) * part(y, width, width)


# -- reading a site ------------------------------------------------------------------------------------------------

@dataclass
class Member:
    """One sibling GEMM as the site's nodes show it."""

    gemm: fx.Node
    x: Any
    weight: Any  # the weight's node: (N, K) when ``transposed``, else (K, N) -- the rhs of x @ R
    transposed: bool
    bias: Any  # the bias's node, or None
    head: fx.Node  # the node whose value is this sibling's output


def members_of(nodes: list[fx.Node]) -> list[Member]:
    """The site's GEMMs, in graph order: ``linear(x, W[, b])``, ``matmul/mm(x, t(W))`` or ``matmul(x, R)``, each
    optionally followed by a bias add that is in the site."""
    inside = set(nodes)
    found = []
    for gemm in (n for n in nodes if is_call(n, *SIBLING_GEMMS)):
        if gemm.target == aten.linear.default:
            found.append(Member(gemm, gemm.args[0], gemm.args[1], True, arg(gemm, 2, "bias", None), gemm))
            continue
        x, other = gemm.args[0], gemm.args[1]
        transposed = isinstance(other, fx.Node) and other in inside and is_matrix_transpose(other)
        weight = other.args[0] if transposed else other
        add = next((u for u in gemm.users if u in inside and is_call(u, aten.add.Tensor)), None)
        bias = None if add is None else (add.args[1] if add.args[0] is gemm else add.args[0])
        found.append(Member(gemm, x, weight, transposed, bias, add or gemm))
    return found


def _weights(gm: fx.GraphModule, members: list[Member], zero_bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weights concatenated as (N1+...+Ng, K), and the biases (zeros for a sibling without one), or None."""
    xs = {id(m.x) for m in members}
    if len(xs) != 1 or not isinstance(members[0].x, fx.Node):
        raise NotApplicable("the GEMMs do not read the very same input node, so one GEMM cannot replace them")
    ws = []
    for m in members:
        w = constant(gm, m.weight, "sibling weight")
        ws.append(w if m.transposed else w.t())
    if len({w.dtype for w in ws}) != 1 or len({w.shape[1] for w in ws}) != 1:
        raise NotApplicable("the siblings' weights differ in dtype or K: concatenating them would change values")
    if not any(m.bias is not None for m in members):
        return torch.cat(ws, 0), None
    if not zero_bias:
        raise NotApplicable("the site has a bias, which this fused computation does not take")
    bs = []
    for m, w in zip(members, ws):
        b = constant(gm, m.bias, "sibling bias") if m.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype,
                                                                                        device=w.device)
        if b.dtype != w.dtype or b.reshape(-1).shape[0] != w.shape[0]:
            raise NotApplicable(f"a sibling's bias has shape {tuple(b.shape)} {b.dtype}, not ({w.shape[0]},) "
                                f"{w.dtype}")
        bs.append(b.reshape(-1))
    return torch.cat(ws, 0), torch.cat(bs, 0)


def _needs_contiguous(head: fx.Node, sliced: fx.Node) -> bool:
    """True when a reader of ``head`` views it in a way its slice's strides cannot express."""
    val = value_of(sliced)
    if not isinstance(val, torch.Tensor):
        return True
    probe = torch.empty_strided(tuple(val.shape), tuple(val.stride()), dtype=val.dtype, device="meta")
    for u in head.users:
        if u.op == "call_function" and u.target in VIEWS_NEEDING_STRIDES:
            try:
                u.target(probe, *u.args[1:], **u.kwargs)
            except (RuntimeError, TypeError):
                return True
    return False


# -- the rewrites --------------------------------------------------------------------------------------------------

def rewrite_siblings_merged(gm, nodes, group):
    """G sibling GEMMs -> one GEMM on the concatenated weights (and biases), then one slice per sibling."""
    members = members_of(nodes)
    if len(members) < 2:
        raise NotApplicable(f"a sibling site needs two GEMMs or more; this one has {len(members)}")
    weight, bias = _weights(gm, members, zero_bias=True)
    widths = [int(w) for w in (value_of(m.head).shape[-1] for m in members)]
    if sum(widths) != weight.shape[0]:
        raise NotApplicable(f"the siblings' outputs are {widths} wide, but their weights have {weight.shape[0]} rows")
    g, x = gm.graph, members[0].x
    first = members[0].gemm  # every sibling reads x, so x is defined before the first of them
    site = getattr(group, "site_id", "site")
    with g.inserting_before(first):
        w = add_constant(gm, site, "weight", weight, like=x)
        b = add_constant(gm, site, "bias", bias, like=x) if bias is not None else None
    # traced at the captured graph's level (pre_dispatch): F.linear stays one aten.linear call, as nn.Linear's were,
    # instead of view/t/addmm/view -- four calls where the variant measured one (their host cost shows in the model)
    if b is None:
        y = emit_traced(g, lambda x_, w_: merged_linear(x_, w_), [x, w], before=first, pre_dispatch=True)
    else:
        y = emit_traced(g, merged_linear, [x, w, b], before=first, pre_dispatch=True)
    pairs = []
    for m, (start, width) in zip(members, spans(widths)):
        out = emit_traced(g, functools.partial(part, start=start, width=width), [y], before=first, pre_dispatch=True)
        if _needs_contiguous(m.head, out):
            out = emit_traced(g, lambda t: t.contiguous(), [out], before=first, pre_dispatch=True)
        pairs.append((m.head, out))
    return pairs


def _gated_parts(nodes: list[fx.Node], roles: dict, flags: frozenset) -> tuple[Member, Member, str, fx.Node]:
    """(gate, up, activation name, the product node) of a gated MLP site, read from its nodes."""
    members = members_of(nodes)
    if len(members) != 2:
        raise NotApplicable(f"a gated MLP site has two GEMMs (gate and up); this one has {len(members)}")
    inside = set(nodes)
    outs = [n for n in nodes if any(u not in inside for u in n.users)]
    if len(outs) != 1 or not is_call(outs[0], aten.mul.Tensor):
        raise NotApplicable("the site's one output is not the product act(gate) * up")
    mul = outs[0]
    ups = [m for m in members if m.head in mul.args[:2]]
    if len(ups) != 1:
        raise NotApplicable("the product does not read exactly one of the two GEMMs directly (the up projection)")
    up = ups[0]
    gate = members[0] if members[1] is up else members[1]
    act_out = mul.args[1] if mul.args[0] is up.head else mul.args[0]
    if Flag.ACT_WRITTEN in flags:  # written out in elementwise ops: the matcher recognised it by value
        name = roles.get("act")
    else:
        name = activation(act_out) if isinstance(act_out, fx.Node) and act_out.args[0] is gate.head else None
    if name not in ACTIVATIONS:
        raise NotApplicable("the gate's activation is not one the library computes")
    return gate, up, name, mul


def _rewrite_presplit(gm, nodes, group, member: Member):
    """A gated MLP pre-fused in the checkpoint (one GEMM on [Wg; Wu], split after it): the same computation, traced
    as :func:`gated` on the GEMM's own weight (no copy of it) -- it already runs as this variant."""
    roles, flags = getattr(group, "roles", None) or {}, getattr(group, "flags", frozenset())
    inside = set(nodes)
    outs = [n for n in nodes if any(u not in inside for u in n.users)]
    if len(outs) != 1 or not is_call(outs[0], aten.mul.Tensor):
        raise NotApplicable("the site's one output is not the product act(gate) * up")
    name = roles.get("act") if Flag.ACT_WRITTEN in flags else next(
        (activation(n) for n in nodes if activation(n) is not None), None)
    if name not in ACTIVATIONS:
        raise NotApplicable("the gate's activation is not one the library computes")
    mul, full = outs[0], value_of(member.head)
    if not isinstance(full, torch.Tensor) or full.shape[-1] % 2:
        raise NotApplicable("the GEMM's output has no even width to split in two halves")
    width = full.shape[-1] // 2
    if member.transposed:
        w = member.weight
    else:  # x @ R with R (K, 2N): its transpose, made once at load
        with gm.graph.inserting_before(mul):
            w = add_constant(gm, getattr(group, "site_id", "site"), "weight",
                             constant(gm, member.weight, "gate_up weight").t().contiguous(), like=member.x)
    return mul, emit_traced(gm.graph, functools.partial(gated, act=name, width=width), [member.x, w], before=mul,
                            pre_dispatch=True)


def rewrite_gated_merged(gm, nodes, group):
    """act(x Wg^T) * (x Wu^T) -> one GEMM on [Wg; Wu], then act(first half) * second half."""
    members = members_of(nodes)
    if len(members) == 1 and members[0].bias is None:  # pre-fused in the checkpoint, split after the GEMM
        return _rewrite_presplit(gm, nodes, group, members[0])
    gate, up, name, mul = _gated_parts(nodes, getattr(group, "roles", None) or {}, getattr(group, "flags", frozenset()))
    weight, _ = _weights(gm, [gate, up], zero_bias=False)
    width = weight.shape[0] // 2
    if 2 * width != weight.shape[0] or value_of(gate.head).shape[-1] != width:
        raise NotApplicable("the gate and up projections differ in width; act(gate) * up needs them equal")
    with gm.graph.inserting_before(mul):
        w = add_constant(gm, getattr(group, "site_id", "site"), "weight", weight, like=gate.x)
    return mul, emit_traced(gm.graph, functools.partial(gated, act=name, width=width), [gate.x, w], before=mul,
                            pre_dispatch=True)
