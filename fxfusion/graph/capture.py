"""Capture a model as aten-level FX graphs, so one pattern is found however the user wrote it.

Method (:func:`capture`):
  1. ``torch.export.export(model, inputs, strict=False)``: one graph of pre-dispatch aten ops (``aten.linear``,
     ``aten.conv2d``, ``aten.batch_norm``, ``aten.matmul``, ...), every node with ``meta["val"]`` (shape, dtype).
     Parameters and buffers are placeholders, named back to the model's names from the graph signature.
  2. When the model does not export as one graph (data-dependent control flow, Python export does not trace), run it
     once under ``torch.compile`` with a recording backend: Dynamo hands it every subgraph (with its real example
     inputs) and the reason each graph break happened.  Each subgraph is then exported the same way as in step 1, so
     the matcher sees one IR either way.  A subgraph that does not export is kept at the torch level, with a note.
Cost: one trace of the model (export), or one Dynamo run plus one export per subgraph; linear in the model's size.
Where an export's time goes (``benchmarks/bench_match_scaling.py``: 1,000 blocks, 11,000 aten nodes; 2-core CPU,
torch 2.13; 13.3 s before :func:`_lean_tracing`): the trace 10.0 s, of which recording each node's stack trace
3.2 s; export's passes 1.9 s; making the parameters fake 0.6 s; building the ExportedProgram 0.4 s.  Spread over
these: the graph's Python code, regenerated six times (1.85 s), and garbage-collection pauses.  :func:`_lean_tracing`
generates the code once and holds the collector off (about 2 s less).  The stack traces stay:
``Site.source`` is read from them.  A bare ``make_fx(pre_dispatch=True)`` trace, without stack traces, module
paths, parameter names or an ExportedProgram, already takes 4.7 s.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import re
from typing import Any

import torch

from fxfusion.errors import FxFusionError
from fxfusion.graph.loader import exception_line
from fxfusion.graph.sites import CapturedModel
from fxfusion.graph.symbolic import DynamicDims, SymbolicGraph

try:  # torch >= 2.2: a GraphModule whose Python code is generated on first use instead of after every pass
    from torch.fx._lazy_graph_module import _use_lazy_graph_module
except ImportError:  # pragma: no cover - older torch: eager code generation, only slower
    _use_lazy_graph_module = None

# Loggers that print whole graphs or long guard dumps when export fails; the failure is reported in one line instead.
_NOISY_LOGGERS = ("torch._dynamo", "torch._export", "torch.export", "torch.fx.experimental.symbolic_shapes",
                  "torch._subclasses", "torch._functorch", "torch._guards")


@contextlib.contextmanager
def quiet_torch_logs():
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in _NOISY_LOGGERS]
    try:
        for logger, _ in saved:
            logger.setLevel(logging.CRITICAL)
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def signature_names(ep: Any) -> dict[str, str]:
    """Placeholder name -> the parameter, buffer or constant it lifts, from an ExportedProgram's signature."""
    sig = ep.graph_signature
    names: dict[str, str] = {}
    for attr in ("inputs_to_parameters", "inputs_to_buffers", "inputs_to_lifted_tensor_constants"):
        names.update(getattr(sig, attr, {}) or {})
    return names


def signature_tensors(ep: Any) -> dict[str, torch.Tensor]:
    """Placeholder name -> the tensor it lifts (parameter, buffer or constant), from an ExportedProgram."""
    tensors = {**ep.state_dict, **getattr(ep, "constants", {})}
    return {ph: tensors[name] for ph, name in signature_names(ep).items()
            if isinstance(tensors.get(name), torch.Tensor)}


@contextlib.contextmanager
def _lean_tracing():
    """Skip work an export does for nothing here; its graph, metadata and program are unchanged.

    * Lazy GraphModules: export regenerates and compiles the graph's Python code after each of its passes (six times
      on torch 2.13); the passes never read it, so it is generated once, when the ExportedProgram is built.
    * No cyclic garbage collection during the trace: most of what a trace allocates stays alive (nodes, fake
      tensors, metadata), and each full collection rescans all of it.  The collector is back on when the export
      returns or raises (unless the caller had switched it off).
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with _use_lazy_graph_module(True) if _use_lazy_graph_module else contextlib.nullcontext():
            yield
    finally:
        if gc_was_enabled:
            gc.enable()


def _export(fn: Any, args: tuple[Any, ...], dynamic_shapes: Any = None) -> Any:
    # On failure torch.export prints the partial graph to stderr (export/_trace.py); the caller reports one line.
    with quiet_torch_logs(), torch.no_grad(), contextlib.redirect_stderr(io.StringIO()), _lean_tracing():
        return torch.export.export(fn, args, strict=False, dynamic_shapes=dynamic_shapes)


def _break_reason(reason: Any) -> str:
    """Dynamo's GraphCompileReason -> one line: what broke the graph and where in the user's code."""
    text = str(getattr(reason, "reason", reason)).strip().splitlines()
    first = text[0] if text else "unknown reason"
    if first.startswith("generic_jump"):  # Dynamo's name for a branch on a tensor's value
        first = f"data-dependent control flow ({first})"
    stack = getattr(reason, "user_stack", None) or []
    where = f" at {stack[-1].filename.rsplit('/', 1)[-1]}:{stack[-1].lineno}" if stack else ""
    return f"{first}{where}"


def _dynamo_names(model: torch.nn.Module, inputs: list[Any], gm: torch.fx.GraphModule) -> dict[str, str]:
    """Dynamo passes parameters to a subgraph as inputs: find them by identity among the model's tensors."""
    by_id = {id(t): n for n, t in model.named_parameters(remove_duplicate=False)}
    by_id.update({id(t): n for n, t in model.named_buffers(remove_duplicate=False)})
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return {ph.name: by_id[id(x)] for ph, x in zip(placeholders, inputs) if id(x) in by_id}


def _export_failure(exc: BaseException) -> str:
    line = exception_line(exc)
    return line if len(line) < 240 else line[:237] + "..."


def _capture_dynamo(model: torch.nn.Module, inputs: tuple[Any, ...], why: str) -> CapturedModel:
    recorded: list[tuple[torch.fx.GraphModule, list[Any], Any]] = []

    def record(gm: torch.fx.GraphModule, example_inputs: list[Any]):
        recorded.append((gm, list(example_inputs), getattr(gm, "compile_subgraph_reason", None)))
        return gm.forward

    torch._dynamo.reset()
    try:
        with quiet_torch_logs(), torch.no_grad():
            torch.compile(model, backend=record, dynamic=False)(*inputs)
    except Exception as exc:
        raise FxFusionError(f"cannot capture the model: export failed ({why}) and so did Dynamo "
                            f"({_export_failure(exc)})") from None
    finally:
        torch._dynamo.reset()
    captured = CapturedModel(method="dynamo", graphs=[], example_inputs=inputs,
                             notes=[f"torch.export could not capture one graph ({why}); captured by Dynamo instead"])
    for i, (gm, example_inputs, reason) in enumerate(recorded):
        if reason is not None and getattr(reason, "graph_break", False):
            captured.graph_breaks.append(_break_reason(reason))
        names = _dynamo_names(model, example_inputs, gm)
        try:
            ep = _export(gm, tuple(example_inputs))
        except Exception as exc:
            captured.notes.append(f"subgraph {i} did not export ({_export_failure(exc)}); kept at the torch level, "
                                  "where the aten patterns do not match")
            captured.graphs.append(gm)
            captured.parameters.append(names)
            captured.programs.append(None)
            captured.graph_inputs.append(tuple(example_inputs))
            continue
        # The exported program keeps the subgraph's placeholders in order; rename by position.
        user_inputs = list(ep.graph_signature.user_inputs)
        old = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        renamed = {new: names[o] for new, o in zip(user_inputs, old) if o in names}
        renamed.update(signature_names(ep))
        captured.graphs.append(ep.graph_module)
        captured.parameters.append(renamed)
        captured.programs.append(ep)
        captured.graph_inputs.append(tuple(example_inputs))
    if not recorded:
        captured.notes.append("Dynamo captured no graph: the model ran no tensor operation it could trace")
    return captured


def capture(model: torch.nn.Module, example_inputs: tuple[Any, ...] | list[Any] | torch.Tensor,
            allow_dynamo: bool = True, dynamic: DynamicDims | None = None) -> CapturedModel:
    """The model as aten FX graphs: one graph from torch.export, else Dynamo's subgraphs and its graph breaks.
    ``dynamic`` exports with symbolic dimensions (:mod:`fxfusion.graph.symbolic`): one graph for every size in its
    ranges, or an FxFusionError saying why not (no Dynamo fallback: its subgraphs would be specialised)."""
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if dynamic is not None:
        return _capture_dynamic(model, inputs, dynamic)
    try:
        ep = _export(model, inputs)
    except Exception as exc:
        why = _export_failure(exc)
        if not allow_dynamo:
            raise FxFusionError(f"torch.export could not capture the model: {why}") from None
        return _capture_dynamo(model, inputs, why)
    return CapturedModel(method="export", graphs=[ep.graph_module], example_inputs=inputs,
                         parameters=[signature_names(ep)], programs=[ep], graph_inputs=[inputs])


def _capture_dynamic(model: torch.nn.Module, inputs: tuple[Any, ...], dynamic: DynamicDims) -> CapturedModel:
    try:
        ep = _export(model, inputs, dynamic.export_shapes())
    except Exception as exc:
        ranges = ", ".join(map(str, dynamic.ranges))
        raise FxFusionError(f"torch.export could not capture the model with symbolic {ranges}: "
                            f"{_export_failure(exc)}") from None
    return CapturedModel(method="export", graphs=[ep.graph_module], example_inputs=inputs,
                         parameters=[signature_names(ep)], programs=[ep], graph_inputs=[inputs],
                         dynamic=SymbolicGraph.of(ep, dynamic))


def module_path(node: torch.fx.Node) -> tuple[str, str]:
    """(module path, class name) of the innermost module that produced ``node``; ('', '') when unknown."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1]
    path = re.sub(r"^L\['[^']*'\]\.?", "", str(path))
    path = re.sub(r"\[(?:'([^']*)'|(\d+))\]", lambda m: "." + (m.group(1) or m.group(2)), path).lstrip(".")
    path = path.replace("._modules.", ".").removeprefix("_modules.")
    cls_name = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1]
    return path, cls_name


def source_line(node: torch.fx.Node) -> str:
    """'file.py:LINE' of the user's code that produced ``node``, from the recorded stack trace, else ''."""
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    user = [f for f in frames if "/torch/" not in f[0] and "site-packages" not in f[0]]
    if not user:
        return ""
    file, line = user[-1]
    return f"{file.rsplit('/', 1)[-1]}:{line}"
