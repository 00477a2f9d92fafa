"""Finding the pattern library's fusible sites in captured aten graphs, and checking that fusing each is legal.

Algorithm (:func:`find_sites`), for a captured model of N nodes:
  1. One pass over every graph: give each compute node its op kind (:data:`KINDS` folds aliases such as
     ``conv2d``/``convolution`` or ``softmax``/``_softmax`` into one kind), bucket nodes by kind, and count the uses
     of every conv weight across all graphs (for the shared-conv rule).
  2. Matchers run in the order of :data:`~fxfusion.fusions.registry.MATCHERS` (the larger pattern first: attention before linear, whose GEMMs
     it contains).  Each visits only the nodes of its anchor kinds, in graph order, and walks a bounded number of
     steps along args and users from the anchor.  A candidate that touches a node already in a site is dropped
     (its nodes stay unmatched), so sites never overlap.
  3. Legality, per candidate: every intermediate must be used only inside the site (the site's output and the
     values its pattern writes out besides, ``Candidate.outputs``, are no intermediates); the site's inputs, parameters
     and output must share one dtype; plus each matcher's own rules (BatchNorm in training mode, a conv weight
     shared with another conv, an active dropout).  An illegal site is kept, with its reasons, never proposed.
  4. Sites are numbered per graph in graph order; every compute node in no site is counted in ``unmatched``.
Cost: O(N + E): each node is bucketed once, and each anchor costs O(1) steps plus the uses of the nodes it takes.

This module is the driver: the shared legality rules and the assembly of sites.  The matchers live with their
families (``fxfusion.fusions.<family>.match``), in the order of :data:`fxfusion.fusions.registry.MATCHERS`.
"""

from __future__ import annotations

import operator
from collections import Counter

from torch.fx import Node

from fxfusion.fusions.base import Candidate, Context, Graph, weight_key
from fxfusion.fusions.registry import MATCHERS
from fxfusion.graph.capture import module_path, signature_tensors, source_line
from fxfusion.graph.edit import bind_constants, bound_constants
from fxfusion.graph.nodes import ASSERT_OPS, dtype_name, kind, op_name, val
from fxfusion.graph.sites import ALREADY_FUSED, FUSIBLE, ILLEGAL, CapturedModel, Site


# -- legality and assembly ---------------------------------------------------------------------------------------

def _intermediate_reasons(c: Candidate) -> list[str]:
    inside = set(c.nodes)
    reasons = []
    written = {c.output, *c.outputs}  # values the fused variants write out: readable outside
    for n in c.nodes:
        if n in written:
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
        program = captured.programs[gi] if gi < len(captured.programs) else None
        if program is not None and not bound_constants(gm):  # lifted buffers readable as constants (attention masks)
            bind_constants(gm, signature_tensors(program))
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
                dtype=c.dtype, status=status, reasons=reasons, roles=dict(c.roles), flags=frozenset(c.flags),
                baseline_variant=c.baseline_variant, written_as=c.written_as, source=source, notes=list(c.notes))


def find_sites(captured: CapturedModel) -> list[Site]:
    """Every site of the pattern library in the captured graphs; fills ``captured.unmatched``.  O(nodes + uses)."""
    graphs, uses, users = _graph_index(captured)
    sites: list[Site] = []
    unmatched: Counter = Counter()
    for g in graphs:
        ctx = Context(g, uses, users)
        claimed: set[Node] = ctx.claimed
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


__all__ = ["find_sites"]
