"""A plan saved to a file and applied again, in another process, without measuring anything.

What a saved plan holds (``schemas/plan.schema.json``, :data:`PLAN_VERSION`), like torchao autoquant's cache of
per-layer choices: the rewrites by site (id, pattern, variant, nodes, roles, flags, baseline variant), the candidate
chosen and its configuration, each decision's evidence in summary (verdict, speedup interval, predicted saving -- not
the raw samples), and where the plan was made: device, torch / Triton / CUDA versions, and the model's *graph
fingerprint* (a hash of every captured graph's op sequence with each value's shape and dtype) with its example inputs'
shapes and dtypes.

Applying it (:func:`rebuild`, then :func:`fxfusion.planning.apply.apply`; :func:`apply` does both):
  1. the environment is compared with the one the plan was made in (device kind and name, torch, CUDA, Triton);
  2. the model is captured again (:func:`fxfusion.graph.capture.capture`) at inputs of the saved shapes (the caller's,
     or made from the specs) and its fingerprint compared with the saved one;
  3. the sites are matched again (:func:`fxfusion.fusions.match.find_sites`: no timing) and each saved rewrite is found
     by site id, pattern and node names; its group is rebuilt from the new site and the saved variant;
  4. ``apply`` rewrites the new capture and builds the chosen candidate (:func:`apply_rebuilt`: code generated once).
A difference in 1-3 is an FxFusionError naming it, unless ``allow_mismatch`` (then a warning, and what still matches
is applied).  Cost: one capture and one match of the model, the rewrites, and a compile where the chosen candidate
compiles; nothing is timed.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import socket
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fxfusion.errors import FxFusionError, FxFusionWarning
from fxfusion.fusions.match import find_sites
from fxfusion.graph.capture import capture
from fxfusion.graph.sites import CapturedModel, Flag
from fxfusion.measure.devices import as_device, dtype_name, kind as device_kind
from fxfusion.measure.hardware import device_name
from fxfusion.graph.edit import drop_unused_attributes
from fxfusion.graph.lean import lean
from fxfusion.graph.runnable import runnable_graph
from fxfusion.planning import apply as apply_module
from fxfusion.planning.dynamic import capture_inputs, from_record, relabel_causal, sizes_of_specs, to_record
from fxfusion.planning.configs import Compiled, Spec
from fxfusion.planning.groups import FusionGroup
from fxfusion.planning.plan import FusionPlan
from fxfusion.planning.rewrite import copy_model, rewrite_group
from fxfusion.profiles import schema
from fxfusion.profiles.profile import Decision
from fxfusion.measure.stats import Speedup

PLAN_KIND, PLAN_VERSION = "fxfusion.plan", "1.0"


# -- where a plan was made ---------------------------------------------------------------------------------------------

def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str | torch.device) -> dict[str, Any]:
    """The device and the software a plan's decisions depend on."""
    device = as_device(device)
    cuda = device_kind(device) == "cuda"
    return {"device": device_kind(device), "device_name": device_name(str(device)), "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None, "triton": _version("triton") if cuda else None,
            "host": socket.gethostname()}


# What must be equal for a plan to apply as made (the host is recorded, not compared: the same device decides alike).
COMPARED = {"device": "device kind", "device_name": "device", "torch": "torch version", "cuda": "CUDA version",
            "triton": "Triton version"}


def environment_differences(saved: dict[str, Any], here: dict[str, Any]) -> list[str]:
    return [f"{what}: the plan was made with {saved.get(key)!s}, this is {here.get(key)!s}"
            for key, what in COMPARED.items() if saved.get(key) != here.get(key)]


# -- the graph's fingerprint -------------------------------------------------------------------------------------------

def _spec(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{dtype_name(value.dtype) if value.is_floating_point() else str(value.dtype)}{list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_spec(v) for v in value) + ")"
    return type(value).__name__ if value is not None else "-"


def _target(node: torch.fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", None) or str(t)


def graph_fingerprints(captured: CapturedModel) -> list[dict[str, Any]]:
    """Per captured graph: its node count and a sha256 of its op sequence with each value's shape and dtype."""
    out = []
    for gm in captured.graphs:
        h = hashlib.sha256()
        nodes = list(gm.graph.nodes)
        for n in nodes:
            h.update(f"{n.op}|{_target(n)}|{_node_spec(captured, n)};".encode())
        out.append({"nodes": len(nodes), "sha256": h.hexdigest()})
    return out


def _node_spec(captured: CapturedModel, node: torch.fx.Node) -> str:
    """A node's shape and dtype for the fingerprint; in a dynamic capture as recorded at capture, in the ranges' names
    (matching specialises the recorded sizes afterwards: a plan is fingerprinted after matching, a model before)."""
    text = captured.dynamic.spec_text(node.name) if captured.dynamic is not None else None
    return text if text is not None else _spec(node.meta.get("val"))


def fingerprint(captured: CapturedModel) -> str:
    """The model's graph fingerprint: one hash over its capture method and every graph's."""
    parts = [captured.method] + [g["sha256"] for g in graph_fingerprints(captured)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def input_specs(inputs: tuple) -> list[dict[str, Any]]:
    return [{"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")} if isinstance(x, torch.Tensor)
            else {"shape": None, "dtype": type(x).__name__} for x in inputs]


def inputs_from_specs(specs: list[dict[str, Any]], device: str | torch.device) -> tuple:
    """Example inputs of the saved shapes and dtypes (seeded normal values; zeros for integers: valid token ids)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for s in specs:
        dt = getattr(torch, s["dtype"], None)
        if s["shape"] is None or not isinstance(dt, torch.dtype):
            raise FxFusionError(f"the plan's input {len(out)} is a {s['dtype']}: pass example_inputs to apply it")
        x = torch.randn(s["shape"], generator=gen).to(dt) if dt.is_floating_point else torch.zeros(s["shape"], dtype=dt)
        out.append(x.to(device))
    return tuple(out)


# -- the file ----------------------------------------------------------------------------------------------------------

@dataclass
class SavedGroup:
    """A rewrite by site: what :func:`rebuild` needs to find the site again and rewrite it, and its evidence."""

    id: str
    pattern: str
    graph_index: int
    nodes: list[str]
    variant: str
    baseline_variant: str
    roles: dict[str, str]
    flags: list[str]
    shape: dict[str, int]
    dtype: str
    evidence: dict[str, Any]


@dataclass
class SavedPlan:
    groups: list[SavedGroup]
    candidate: dict[str, Any]  # name (plan.choice["chosen"]), why, configuration
    made: dict[str, Any]  # environment() where the plan was made, and when
    model: dict[str, Any]  # class, capture method, fingerprint, graphs, inputs
    evidence: dict[str, Any] = field(default_factory=dict)  # the plan's predicted saving, the candidates' medians
    path: str | None = None  # where it was loaded from
    dynamic: dict[str, Any] | None = None  # a plan over dynamic shapes: its ranges (planning.dynamic.to_record)

    @property
    def chosen(self) -> str:
        return self.candidate["name"]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": PLAN_KIND, "schema_version": PLAN_VERSION, "made": self.made, "model": self.model,
                "candidate": self.candidate, "groups": [asdict(g) for g in self.groups], "evidence": self.evidence,
                **({"dynamic": self.dynamic} if self.dynamic is not None else {})}

    def save(self, path: str | Path) -> Path:
        data = self.to_dict()
        schema.validate(data, "plan")
        return schema.atomic_write_json(path, data)


def _interval(s: Speedup | None) -> dict[str, float] | None:
    return {"median": s.median, "ci_low": s.ci_low, "ci_high": s.ci_high} if s is not None else None


def _evidence(g: FusionGroup) -> dict[str, Any]:
    d: Decision | None = g.decision
    return {"verdict": d.verdict if d is not None else None, "speedup": _interval(g.speedup),
            "predicted_saving_ms": g.predicted_saving_ms, "library_saving_ms": g.library_saving_ms,
            "decided_in_model": g.decided_in_model, "reason": d.reason if d is not None else None,
            "in_model": {str(c): {"saving_ms": r.saving_ms, "fraction": r.fraction, "verdict": r.verdict}
                         for c, r in g.regions.items()},
            "classes": {str(c): {"saving_ms": t.saving_ms, "fraction": t.fraction} for c, t in g.classes.items()}}


def _candidate(choice: dict[str, Any] | None) -> dict[str, Any]:
    choice = choice or {}
    name = choice.get("chosen") or apply_module.PLANNED
    row = next((r for r in choice.get("candidates", []) if r.get("name") == name), {})
    config = row.get("config") or row.get("configuration")
    return {"name": name, "why": choice.get("why"),
            "configuration": config if isinstance(config, (dict, str)) else None}


def _candidate_rows(choice: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [{"name": r.get("name"), "status": r.get("status"), "verified": r.get("verified"),
             "median_ms": r.get("median_ms")} for r in (choice or {}).get("candidates", [])]


def _chosen_groups(plan: FusionPlan) -> list[FusionGroup]:
    """The groups the chosen candidate applies (what was timed): the file keeps no timings to leave a class out again."""
    spec = Spec.parse(_candidate(plan.choice)["name"])
    return plan.groups_for(spec.context) if spec.rewrites else list(plan.groups)


def saved_plan(plan: FusionPlan, model: nn.Module | None = None, example_inputs: tuple | None = None) -> SavedPlan:
    """What :func:`save_plan` writes, as an object."""
    if not isinstance(plan, FusionPlan):
        raise FxFusionError(f"save_plan() takes a FusionPlan, got {type(plan).__name__}")
    inputs = tuple(example_inputs) if example_inputs is not None else tuple(plan.captured.example_inputs)
    groups = [SavedGroup(g.id, g.pattern, g.graph_index, list(g.nodes), g.variant, g.baseline_variant, dict(g.roles),
                         sorted(str(f) for f in g.flags), dict(g.shape), g.dtype, _evidence(g))
              for g in _chosen_groups(plan)]
    made = {**environment(plan.device), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "fxfusion": _version("fxfusion")}
    described = {"class": type(model).__name__ if model is not None else None, "capture": plan.captured.method,
                 "fingerprint": fingerprint(plan.captured), "graphs": graph_fingerprints(plan.captured),
                 "inputs": input_specs(inputs)}
    evidence = {"predicted_saving_ms": plan.predicted_saving_ms, "overhead_ms": plan.overhead_ms,
                "regime": plan.regime, "candidates": _candidate_rows(plan.choice), "refused": len(plan.refused)}
    return SavedPlan(groups, _candidate(plan.choice), made, described, evidence,
                     dynamic=to_record(plan.captured.dynamic.dims) if plan.captured.dynamic is not None else None)


def save_plan(plan: FusionPlan, path: str | Path, model: nn.Module | None = None,
              example_inputs: tuple | None = None) -> Path:
    """Write ``plan`` (made, and best verified and chosen, by ``analyze --apply`` or ``apply_and_verify``) to
    ``path``, schema-validated and atomically; :func:`load_plan` reads it back in any process."""
    return saved_plan(plan, model, example_inputs).save(path)


def load_plan(path: str | Path) -> SavedPlan:
    """A saved plan, validated against its schema; a missing, truncated or corrupt file is one FxFusionError."""
    data = schema.read_document(path, PLAN_KIND, "plan")
    schema.validate(data, "plan", source=str(path))
    return SavedPlan([SavedGroup(**g) for g in data["groups"]], data["candidate"], data["made"], data["model"],
                     data.get("evidence", {}), str(path), data.get("dynamic"))


# -- applying it -------------------------------------------------------------------------------------------------------

def _device_of(model: nn.Module, inputs: tuple | None) -> torch.device:
    for t in list(inputs or ()) + list(model.parameters()) + list(model.buffers()):
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


def _differences(saved: SavedPlan, captured: CapturedModel, inputs: tuple) -> list[str]:
    m = saved.model
    if input_specs(inputs) != m["inputs"]:
        return [f"the example inputs are {_specs_text(input_specs(inputs))}, the plan's were "
                f"{_specs_text(m['inputs'])}"]
    if captured.method != m["capture"]:
        return [f"the model was captured by {captured.method}, the plan's by {m['capture']}"]
    if fingerprint(captured) == m["fingerprint"]:
        return []
    ours, theirs = graph_fingerprints(captured), m["graphs"]
    if len(ours) != len(theirs):
        return [f"the model's graph differs: {len(ours)} captured graphs, the plan's model had {len(theirs)}"]
    return [f"the model's graph {i} differs from the plan's ({a['nodes']} nodes, the plan's had {b['nodes']}; "
            "another op, shape or dtype)" for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]


def _specs_text(specs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{tuple(s['shape']) if s['shape'] is not None else ''} {s['dtype']}".strip() for s in specs)


def _decision(g: SavedGroup, device: str) -> Decision:
    e = g.evidence
    s = e.get("speedup")
    return Decision(g.pattern, dict(g.shape), g.dtype, device, e.get("verdict") or "fuse", g.variant,
                    Speedup(s["median"], s["ci_low"], s["ci_high"]) if s else None,
                    e.get("reason") or "from a saved plan")


def _capture_as_saved(saved: SavedPlan, model: nn.Module, inputs: tuple) -> tuple[CapturedModel, tuple]:
    """The model captured as the plan was: with its symbolic ranges for a plan over dynamic shapes (then the inputs
    compared with the saved ones are ``inputs`` at the saved sizes: their fixed dimensions and dtypes must match)."""
    if saved.dynamic is None:
        return capture(model, inputs), inputs
    dims = from_record(saved.dynamic)
    compared = dims.resize(inputs, sizes_of_specs(dims, saved.model["inputs"]))
    return capture(model, capture_inputs(dims, compared), dynamic=dims), compared


def rebuild(saved: SavedPlan, model: nn.Module, example_inputs: tuple | None = None,
            allow_mismatch: bool = False) -> FusionPlan:
    """The saved plan as a :class:`FusionPlan` of ``model`` captured here, its chosen candidate set (module doc,
    steps 1-3); nothing is timed."""
    if not isinstance(saved, SavedPlan):
        raise FxFusionError(f"rebuild() takes a SavedPlan (fxfusion.load_plan), got {type(saved).__name__}")
    if not isinstance(model, nn.Module):
        raise FxFusionError(f"a saved plan applies to an nn.Module, got {type(model).__name__}")
    source = saved.path or "the saved plan"
    device = _device_of(model, example_inputs)
    problems = environment_differences(saved.made, environment(device))
    inputs = tuple(example_inputs) if example_inputs is not None else inputs_from_specs(saved.model["inputs"], device)
    captured, compared = _capture_as_saved(saved, model, inputs)
    problems += _differences(saved, captured, compared)
    sites = {s.id: s for s in find_sites(captured)}
    if captured.dynamic is not None:  # a mask proved causal over the range when saved: proved again here
        problems += relabel_causal(captured, sites, {g.id: g.pattern for g in saved.groups})
    groups = []
    for g in saved.groups:
        site = sites.get(g.id)
        if site is None or site.pattern != g.pattern or list(site.nodes) != list(g.nodes):
            problems.append(f"site {g.id} ({g.pattern}) is not in the model as captured here"
                            + (f" (there it is a {site.pattern} site of {len(site.nodes)} nodes)" if site else ""))
            continue
        groups.append(FusionGroup(id=site.id, pattern=site.pattern, graph_index=site.graph_index,
                                  nodes=list(site.nodes), variant=g.variant, baseline_variant=g.baseline_variant,
                                  speedup=_decision(g, str(device)).speedup,
                                  predicted_saving_ms=g.evidence.get("predicted_saving_ms"), baseline_ms=None,
                                  variant_ms=None, decision=_decision(g, str(device)), shape=dict(site.shape),
                                  dtype=site.dtype, roles=dict(site.roles), flags=site.flags or frozenset(
                                      Flag(f) for f in g.flags)))
    if problems and not allow_mismatch:
        raise FxFusionError(f"{source} does not fit here: {problems[0]}"
                            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                            + "; analyse again here, or pass allow_mismatch=True (CLI: --allow-mismatch) to apply it "
                              "anyway")
    plan = FusionPlan(captured=captured, sites=list(sites.values()), groups=groups, refused=[], device=device,
                      warnings=[f"{source}: {p}; applied anyway (allow_mismatch)" for p in problems])
    plan.choice = {"chosen": saved.chosen, "why": f"chosen when the plan was made ({saved.made.get('date')})",
                   "candidates": []}
    for w in plan.warnings:
        warnings.warn(f"fxfusion: {w}", FxFusionWarning, stacklevel=3)
    return plan


def apply(model: nn.Module, plan, other_shapes: str = "error", candidate: str | None = None,
          example_inputs: tuple | None = None, allow_mismatch: bool = False) -> nn.Module:
    """``fxfusion.apply``: :func:`fxfusion.planning.apply.apply` for a :class:`FusionPlan`; for a :class:`SavedPlan`
    (:func:`load_plan`), the plan rebuilt on ``model`` captured here (:func:`rebuild`), then applied -- the candidate
    chosen when it was made, unless ``candidate`` names another -- by :func:`apply_rebuilt`."""
    if isinstance(plan, SavedPlan):
        spec = Spec.parse(candidate or plan.chosen)
        # The user's module, copied before the capture: one that keeps its last call's tensors (a KV cache pointing
        # at its inputs, as the zoo's decode step did) holds export's fake tensors after it, which no copy can take.
        original = copy_model(model) if not (spec.rewrites or spec.captured) else None
        return apply_rebuilt(model, rebuild(plan, model, example_inputs, allow_mismatch), other_shapes, candidate,
                             original)
    return apply_module.apply(model, plan, other_shapes=other_shapes, candidate=candidate)


def apply_rebuilt(model: nn.Module, plan: FusionPlan, other_shapes: str = "error", candidate: str | None = None,
                  original: nn.Module | None = None) -> nn.Module:
    """:func:`fxfusion.planning.apply.apply` of a rebuilt plan, the module it hands back the same, made faster: the
    rewrites of an exported graph are written into one copy of it and its code is generated once
    (:func:`planned_once`), where ``apply`` generates it again after every group -- 88 code generations of a
    500-node graph were 12.7 of EfficientNet-B0's 16.2 s of rewriting (tiny preset, 2-core CPU under load,
    2026-12-07).  A Dynamo capture, ``other_shapes="original"`` or a plan none of whose rewrites applies takes
    ``apply``'s own path.  ``original``: a copy of ``model`` made before it was captured, the module of a candidate
    without rewrites (eager, compile[+config], channels_last+compile)."""
    spec = Spec.parse(candidate or (plan.choice or {}).get("chosen") or apply_module.PLANNED)
    planned = planned_once(model, plan) if spec.rewrites and other_shapes == "error" else None
    whole = original is not None and not (spec.rewrites or spec.captured) and other_shapes in apply_module.OTHER_SHAPES
    if planned is None and not whole:
        return apply_module.apply(model, plan, other_shapes=other_shapes, candidate=candidate)
    module = apply_module.candidate_module(spec, original if whole else model, plan, planned=planned)
    records = getattr(module, "fxfusion_rewrites", [])
    if spec.config is not None:
        module = Compiled(module, spec.config)
    module.fxfusion_rewrites, module.fxfusion_candidate = records, spec.name
    return module


def planned_once(model: nn.Module, plan: FusionPlan) -> nn.Module | None:
    """The planned module of an exported plan (``rewrite.planned_module``'s export path): a runnable copy of the
    graph, every group rewritten on it in order (each still transactional and linted, its code left stale: the
    rewrites read the graph, never its code), the tensors they replaced dropped, then ``lean`` -- which generates the
    code, once.  None where that path does not apply (see :func:`apply_rebuilt`)."""
    if plan.captured.method != "export" or not plan.groups:
        return None
    gm = runnable_graph(plan.captured, 0, model)
    if gm is None:
        return None
    records = [rewrite_group(gm, g, recompile=False) for g in plan.groups]
    if not any(r.applied for r in records):
        return None
    gm.fxfusion_rewrites = records
    drop_unused_attributes(gm)
    return lean(gm)
