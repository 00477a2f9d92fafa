"""The partitioner bridge: an OperatorSupport from a plan, one submodule per group, and the docs' example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner

from fxfusion.graph.capture import capture
from fxfusion.measure.correctness import relative_error
from fxfusion.errors import FxFusionError
from fxfusion.graph.loader import load_model
from fxfusion.fusions.match import find_sites
from fxfusion.graph.partition import partition, plan_operator_support
from fxfusion.planning.plan import FusionPlan
from fxfusion.profiles.profile import Decision

ROOT = Path(__file__).resolve().parent.parent
FLOAT32_TOL = 1e-4  # the partitioned graph runs the same ops in the same order: float32 rounding only


def plan_for(name: str, variant_of=lambda s: "compile") -> tuple[FusionPlan, nn.Module, tuple]:
    loaded = load_model(ROOT / "models" / f"{name}.py")
    captured = capture(loaded.model, loaded.example_inputs)
    sites = find_sites(captured)
    decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", variant_of(s), None, "hand")
                 for s in sites if s.legal}
    return FusionPlan.from_decisions(captured, sites, decisions), loaded.model, loaded.example_inputs


@pytest.mark.parametrize("name", ["resnet_bottleneck", "transformer_block", "shared_conv"])
def test_stock_partitioner_never_takes_a_refused_node(name):
    plan, _, _ = plan_for(name)
    gm = plan.captured.programs[0].module()
    support = plan_operator_support(plan)
    planned = {n for g in plan.groups for n in g.nodes}
    supported = {n.name for n in gm.graph.nodes if support.is_node_supported({}, n)}
    assert supported == planned
    partitions = CapabilityBasedPartitioner(gm, support, allows_single_node_partition=True).propose_partitions()
    taken = {n.name for p in partitions for n in p.nodes}
    assert taken == planned  # every planned node, and nothing else (refused and unmatched nodes stay out)


def test_adjacent_groups_become_separate_submodules():
    """resnet_bottleneck: three conv+BN groups back to back; the stock partitioner would merge them into one."""
    plan, model, inputs = plan_for("resnet_bottleneck")
    gm = plan.captured.programs[0].module()
    stock = CapabilityBasedPartitioner(gm, plan_operator_support(plan), allows_single_node_partition=True)
    assert len(stock.propose_partitions()) < len(plan.groups)
    fused = partition(plan)
    fused.graph.lint()
    assert list(fused.fxfusion_partitions.values()) == [g.id for g in plan.groups]
    for name, gid in fused.fxfusion_partitions.items():
        sub = getattr(fused, name)
        inner = {n.name for n in sub.graph.nodes if n.op == "call_function"}
        assert inner == set(plan.group(gid).nodes)
    calls = [n.target for n in fused.graph.nodes if n.op == "call_module" and not n.target.startswith("_")]
    assert calls == list(fused.fxfusion_partitions)
    with torch.no_grad():
        ref = model.double()(*[x.double() for x in inputs])
        model.float()
        assert relative_error(fused(*inputs), ref) < FLOAT32_TOL


def test_partition_leaves_the_plan_untouched_and_checks_its_arguments():
    plan, _, _ = plan_for("mobilenet_block")
    code = plan.captured.graphs[0].code
    partition(plan)
    assert plan.captured.graphs[0].code == code
    with pytest.raises(FxFusionError, match="graph_index 3 out of range"):
        partition(plan, graph_index=3)


def test_partition_of_an_empty_plan_is_the_graph():
    plan, _, _ = plan_for("mobilenet_block", variant_of=lambda s: "no-such-variant")
    assert plan.groups == [] and {r.why for r in plan.refused} == {"no_rewrite"}
    fused = partition(plan)
    assert fused.fxfusion_partitions == {}


def test_docs_example_runs(capsys):
    """Every Python block of docs/partitioner.md runs as written."""
    text = (ROOT / "docs" / "partitioner.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/partitioner.md has no python example"
    for block in blocks:
        exec(compile(block, "docs/partitioner.md", "exec"), {"__name__": "docs_example"})
    out = capsys.readouterr().out
    assert "fxfusion_group_0" in out and "bn_folded" in out


def test_contracted_cycle_walks_for_a_cycle_only_where_there_is_one(monkeypatch):
    """find_cycle is ~400x slower than a topological sort on an acyclic graph (0.42 s on ResNet-50's graph, once per
    candidate group): the usual, acyclic answer comes from the sort, and a cycle is still named."""
    import networkx as nx

    from fxfusion.graph.partition import contracted_cycle

    chain = nx.DiGraph([("a", "b"), ("b", "c")])
    for n in chain:
        chain.nodes[n]["graph_index"] = 0
    around = type("Group", (), {"id": "g0.s0", "graph_index": 0, "nodes": ["a", "c"]})()  # a -> b -> c, fused a+c
    real = nx.find_cycle
    monkeypatch.setattr(nx, "find_cycle", lambda *a, **k: pytest.fail("find_cycle on an acyclic graph"))
    assert contracted_cycle(chain, []) is None
    monkeypatch.setattr(nx, "find_cycle", real)
    assert contracted_cycle(chain, [around]) in ("g0.s0 -> b -> g0.s0", "b -> g0.s0 -> b")
