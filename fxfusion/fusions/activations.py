"""The activations the library fuses, each declared once: its name, title, function and what fuses it.

Every family reads them from here: the patterns (``linear_bias_gelu`` runs ``ACTIVATIONS["gelu"].fn``), the
matchers (:func:`activation` names an aten node; :func:`written_activation` recognises one written out in
elementwise ops by value, against the same functions in float64) and the rewrites (the cuBLASLt epilogue flag, the
oneDNN convolution post-op).  A family takes only the activations it has patterns for (a linear followed by Hardswish
is a linear site with a note, not a ``linear_bias_hardswish`` site).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.fx import Node

from fxfusion.graph.nodes import arg, kind


@dataclass(frozen=True)
class Activation:
    name: str  # the pattern-name suffix: linear_bias_<name>
    title: str  # for humans: "GELU(tanh)"
    legacy: str  # the original suite's spelling: "GELUTanh"
    fn: Callable[[torch.Tensor], torch.Tensor]  # the eager op, and (in float64) the fingerprint's reference
    # torch._addmm_activation runs cuBLASLt's fused bias+ReLU / bias+GELU(tanh) epilogue on CUDA: its use_gelu flag
    # for this activation, or None where the epilogue cannot compute it (its GELU is the tanh approximation only).
    epilogue_gelu: bool | None = None
    # oneDNN's convolution post-op computing it, as torch.ops.mkldnn._convolution_pointwise takes it (attr, scalars,
    # algorithm): conv + bias + activation in one oneDNN primitive on CPU.  None where oneDNN has no such post-op.
    onednn: tuple[str, tuple[float, ...], str | None] | None = None


ACTIVATIONS: dict[str, Activation] = {a.name: a for a in (
    Activation("relu", "ReLU", "ReLU", F.relu, epilogue_gelu=False, onednn=("relu", (), None)),
    Activation("gelu", "GELU", "GELU", F.gelu, onednn=("gelu", (), "none")),
    Activation("gelu_tanh", "GELU(tanh)", "GELUTanh", lambda t: F.gelu(t, approximate="tanh"), epilogue_gelu=True,
               onednn=("gelu", (), "tanh")),
    Activation("silu", "SiLU", "SiLU", F.silu, onednn=("swish", (), None)),
    Activation("relu6", "ReLU6", "ReLU6", F.relu6, onednn=("hardtanh", (0.0, 6.0), None)),
    Activation("hardswish", "Hardswish", "Hardswish", F.hardswish, onednn=("hardswish", (), None)),
    # the gates of squeeze-excitation blocks (EfficientNet: sigmoid; MobileNetV3: hardsigmoid)
    Activation("sigmoid", "Sigmoid", "Sigmoid", torch.sigmoid, onednn=("sigmoid", (), None)),
    Activation("hardsigmoid", "Hardsigmoid", "Hardsigmoid", F.hardsigmoid, onednn=("hardsigmoid", (), None)),
    # CLIP's (and OpenAI's) GELU approximation, x * sigmoid(1.702 x): no aten op, always written out, so it is
    # matched by value (written_activation); it is neither GELU (max difference 0.02) nor SiLU (1.702 != 1)
    Activation("quick_gelu", "QuickGELU", "QuickGELU", lambda t: t * torch.sigmoid(1.702 * t)),
)}


def title(name: str) -> str:
    return ACTIVATIONS[name].title


def activation(node: Node) -> str | None:
    """The name in :data:`ACTIVATIONS` of an activation node ('relu', 'gelu', 'gelu_tanh', 'silu', 'relu6' as
    ``hardtanh(0, 6)`` too, 'hardswish', 'sigmoid', 'hardsigmoid'; in place or not), else None."""
    k = kind(node)
    if k == "gelu":
        return "gelu_tanh" if arg(node, 1, "approximate", "none") == "tanh" else "gelu"
    if k == "hardtanh":
        low, high = arg(node, 1, "min_val", -1.0), arg(node, 2, "max_val", 1.0)
        return "relu6" if (low, high) == (0, 6) or (low, high) == (0.0, 6.0) else None
    return k if k in ("relu", "silu", "relu6", "hardswish", "sigmoid", "hardsigmoid") else None


# -- activations written out as elementwise arithmetic ---------------------------------------------------------------

# Elementwise aten ops a hand-written activation is made of (GPT-2's NewGELU: mul, pow, add, tanh; erf GELU: mul,
# div, erf, add; x * sigmoid(x)).
ELEMENTWISE = frozenset({"mul", "add", "sub", "div", "pow", "tanh", "erf", "sigmoid", "neg", "exp", "rsub",
                         "sqrt", "reciprocal", "clamp", "clamp_min", "clamp_max"})
WRITTEN_MAX_NODES = 16


def written_activation(x: Node) -> tuple[str, list[Node], Node] | None:
    """An activation of ``x`` written out in elementwise ops (``0.5 * x * (1 + tanh(...))``): its name, its nodes in
    graph order, and its output node; None when there is none.

    The region is the elementwise ops that read only ``x``, each other and Python scalars, and whose values are
    used by nothing outside it but one output.  What it computes is then recognised by value, not by shape: it is
    evaluated in float64 on 2001 points in [-8, 8] and compared with each activation of the library (max relative
    error 1e-6 of the activation's range), so any algebraically equal spelling matches and a near miss (QuickGELU's
    x * sigmoid(1.702 x) is not GELU) is told apart.
    """
    region: list[Node] = []
    inside = {x}
    frontier = list(x.users)
    steps = 0
    while frontier:
        steps += 1
        if steps > 8 * WRITTEN_MAX_NODES:  # a node waiting on an input the region never reaches
            return None
        n = frontier.pop(0)
        if n in inside:
            continue
        if kind(n) not in ELEMENTWISE or n.kwargs.get("out") is not None:
            continue
        ins = [a for a in n.all_input_nodes]
        if not all(a in inside for a in ins):
            if all(a in inside or kind(a) in ELEMENTWISE for a in ins):
                frontier.append(n)  # an input is still to be reached: visit it again later
            continue
        region.append(n)
        inside.add(n)
        if len(region) > WRITTEN_MAX_NODES:
            return None
        frontier.extend(n.users)
    if not region:
        return None
    members = set(region)
    outputs = [n for n in region if any(u not in members for u in n.users) or not n.users]
    if len(outputs) != 1 or any(u not in members for u in x.users):
        return None
    out = outputs[0]
    # everything in the region must feed the output (no dangling side branch)
    feeding, stack = set(), [out]
    while stack:
        n = stack.pop()
        if n in feeding or n not in members:
            continue
        feeding.add(n)
        stack.extend(n.all_input_nodes)
    if feeding != members:
        return None
    name = _fingerprint(x, region, out)
    if name is None:
        return None
    order = {n: i for i, n in enumerate(x.graph.nodes)}
    return name, sorted(region, key=order.__getitem__), out


def _fingerprint(x: Node, region: list[Node], out: Node) -> str | None:
    probe = torch.linspace(-8.0, 8.0, 2001, dtype=torch.float64)
    values = {x: probe}
    order = {n: i for i, n in enumerate(x.graph.nodes)}
    try:
        with torch.no_grad():
            for n in sorted(region, key=order.__getitem__):
                args = torch.fx.node.map_arg(n.args, lambda a: values[a])
                kwargs = torch.fx.node.map_arg(n.kwargs, lambda a: values[a])
                kwargs = {k: v for k, v in kwargs.items() if k not in ("dtype", "layout", "device", "pin_memory")}
                values[n] = n.target(*args, **kwargs)
    except Exception:  # an op that does not take a float64 CPU tensor: not an activation we know
        return None
    got = values[out]
    if not isinstance(got, torch.Tensor) or got.shape != probe.shape:
        return None
    for name, act in ACTIVATIONS.items():
        want = act.fn(probe)
        if torch.allclose(got, want, rtol=0.0, atol=1e-6 * float(want.abs().max())):
            return name
    return None
