"""The package's shape: no import cycles (imports inside functions count), modules of a readable size, a CLI that
imports its commands plainly -- and a new fusion added by one module and one registration, as
docs/architecture.md walks through it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import fxfusion
from fxfusion.calibration.calibrate import measure_entry
from fxfusion.fusions import registry
from fxfusion.fusions.match import find_sites
from fxfusion.graph.capture import capture
from fxfusion.graph.lean import original_target
from fxfusion.measure.hardware import resolve
from fxfusion.measure.timing import clock_for
from fxfusion.planning.apply import apply
from fxfusion.planning.plan import FusionPlan
from fxfusion.profiles.profile import Decision
from tests import toy_family
from tests.helpers import TINY_SPEC

PACKAGE = Path(fxfusion.__file__).resolve().parent
MAX_LINES = 400  # "no module over about 400 lines" (issue 10); a module past this is split, not stretched


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every fxfusion module ``path`` imports, at any depth of its code (the rule of ../shared/tools/import_cycles.py:
    a package's __init__ importing its own children is not a loop)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            cands = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            cands = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for c in cands:
            while c and c not in known:
                c = c.rpartition(".")[0]
            if c and c != name and not (path.name == "__init__.py" and c.startswith(name + ".")):
                out.add(c)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imports(m, p, set(modules)) for m, p in modules.items()}
    assert _cycles(graph) == []


def test_the_cycle_check_sees_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import g\n")
    (pkg / "b.py").write_text("def g():\n    from pkg.a import x\n")
    modules = {"pkg": pkg / "__init__.py", "pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py"}
    graph = {m: _imports(m, p, set(modules)) for m, p in modules.items()}
    assert _cycles(graph) == [["pkg.a", "pkg.b"]]


def test_modules_stay_readable():
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_module_is_named_in_the_architecture_page():
    """docs/architecture.md's layer map names every module (by file name) and every family folder: a new module is
    placed in the map when it is added, and the map never describes a module that is gone."""
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    layers = page[page.index("```\n  cli/"):page.index("## Planning in twelve terms")]
    missing = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                     if p.parent != PACKAGE and p.name != "__init__.py" and p.name not in layers)
    folders = sorted({p.parent.name + "/" for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE})
    assert missing == [] and [f for f in folders if f not in layers] == []
    named = {w for w in layers.replace(",", " ").replace("(", " ").split() if w.endswith(".py")}
    gone = sorted(n for n in named if not list(PACKAGE.rglob(n)))
    assert gone == []


def test_the_cli_imports_its_commands_plainly():
    for path in (PACKAGE / "cli").glob("*.py"):
        assert "importlib" not in path.read_text(), path


def test_every_layer_is_a_subpackage():
    top = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert top == {"measure", "graph", "fusions", "profiles", "calibration", "planning", "reports", "cli"}


# -- adding a fusion: the walk-through of docs/architecture.md, literally ------------------------------------------

class LinearTanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 32)

    def forward(self, x):  # x: (8, 16)
        return torch.tanh(x @ self.fc.weight.t() + self.fc.bias)


def test_a_new_family_is_matched_measured_decided_and_applied():
    torch.manual_seed(0)
    model, x = LinearTanh().eval(), torch.randn(8, 16)
    assert "linear_bias_tanh" not in registry.REGISTRY
    with registry.registered(toy_family.FAMILY, first=True):
        # matched
        captured = capture(model, (x,))
        sites = find_sites(captured)
        assert [(s.pattern, s.status, s.shape) for s in sites] == [
            ("linear_bias_tanh", "fusible", {"M": 8, "K": 16, "N": 32})]
        # measured: eager and the fused variant, both checked against float64
        entry = measure_entry(registry.REGISTRY["linear_bias_tanh"], sites[0].shape, "float32", "cpu",
                              resolve("generic-cpu"), TINY_SPEC, clock_for("cpu"), compile_modes=())
        fused = entry.variant("addmm_tanh")
        assert fused.status == "ok" and fused.rel_error < fused.tolerance and fused.samples_ms
        # decided, by the library's rule
        assert entry.decision.verdict in ("fuse", "neutral", "avoid") and entry.decision.reason
        # applied: a fuse decision for the site becomes the traced addmm + tanh, checked against float64
        d = Decision("linear_bias_tanh", dict(sites[0].shape), "float32", "cpu", "fuse", "addmm_tanh", None, "test")
        plan = FusionPlan.from_decisions(captured, sites, {sites[0].id: d})
        assert [(g.pattern, g.variant) for g in plan.groups] == [("linear_bias_tanh", "addmm_tanh")]
        planned = apply(model, plan)
        assert [r.applied for r in planned.fxfusion_rewrites] == [True]
        targets = [original_target(n) for n in planned.graph.nodes if n.op == "call_function"]
        assert torch.ops.aten.addmm.default in targets and torch.ops.aten.matmul.default not in targets
        reference = model.double()(x.double())
        model.float()
        assert torch.allclose(planned(x).double(), reference, rtol=1e-4, atol=1e-5)
    assert "linear_bias_tanh" not in registry.REGISTRY and all(m.family != "toy_tanh" for m in registry.MATCHERS)


def test_a_family_cannot_take_a_registered_pattern_name():
    clash = toy_family.Family("clash", (registry.REGISTRY["linear_bias"],), ())
    with pytest.raises(fxfusion.FxFusionError, match="already registered"):
        registry.register(clash)
    assert "clash" not in [f.name for f in registry.FAMILY_LIST]
