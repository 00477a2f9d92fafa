"""Lean calls for a runnable captured graph: what running the graph costs over the model it came from, made smaller.

A captured (exported) graph is slower to call than the eager model it came from (by how much on the reference models:
the retired ``bench_lean.py``, its finding in docs/results/history.md) -- and a plan has to save more than that before
it pays (:func:`fxfusion.planning.insitu.measure_overhead`).
The cost is Python, not kernels:

  * ``torch.ops.aten.relu.default(x)`` goes through ``OpOverload.__call__`` and boxed argument handling, which costs
    more per call than ``torch.relu(x)``, reaching the same aten operator through the generated Python bindings
    (the retired ``bench_lean.py`` measured both: docs/results/history.md);
  * the exported module flattens its inputs and unflattens its outputs with pytree on every call;
  * every constant is fetched through nested ``Module.__getattr__`` calls (``getattr(self.downsample, "1").bias``),
    unused ones (``num_batches_tracked``) included.

:func:`lean` rewrites a graph module in place, after the plan's rewrites (which match aten overloads):

  1. a call of an ``aten`` overload becomes the public binding of the same name -- ``torch.<name>``,
     ``torch._C._nn.<name>`` or the ``Tensor`` method -- when the binding is a C builtin (never a Python wrapper,
     whose semantics may differ); the binding's argument parser resolves the same overload from the same arguments;
     an op with no such binding, or whose binding does not parse its arguments (``aten.to.dtype_layout``), keeps its
     aten call;
  2. constants no node reads are dropped, and the others are read as direct attributes of the module;
  3. with positional tensor inputs and a single or tuple output, the pytree wrapper is replaced by a plain signature.

The outputs are unchanged bit for bit (tests/test_lean.py checks every reference model), and ``analyze --apply``
verifies every planned model against float64 anyway.
"""

from __future__ import annotations

import builtins
from typing import Any

import torch
from torch import fx

from fxfusion.graph.edit import attribute

# A lean node keeps what it stood for (the aten overload, or the constant's dotted name) in its meta, under this key.
ORIGINAL = "fxfusion_original_target"
_BUILTIN = type(torch.relu)  # builtin_function_or_method
_METHOD = type(torch.Tensor.view)  # method_descriptor
# Overloads whose binding of the same name does not parse the overload's arguments: they keep their aten call.
# aten.to.dtype_layout, what export records for ``.to(device)`` (with layout=torch.strided), has keyword layout= and
# pin_memory=, which Tensor.to's hand-written parser rejects (TypeError: to() received an invalid combination).
_UNPARSED = frozenset({"aten::to.dtype_layout"})


def binding_for(op: Any) -> tuple[str, Any] | None:
    """('call_function', fn) or ('call_method', name) reaching ``op`` (an aten OpOverload) through a C binding."""
    if not isinstance(op, torch._ops.OpOverload) or op.namespace != "aten" or op.name() in _UNPARSED:
        return None
    name = op._overloadpacket.__name__
    fn = getattr(torch._C._VariableFunctions, name, None)
    # generated code names it torch.<name>: that must be the builtin itself, not a Python wrapper (torch.split,
    # torch.norm in torch.functional)
    if isinstance(fn, _BUILTIN) and getattr(torch, name, None) is fn:
        return "call_function", fn
    fn = getattr(torch._C._nn, name, None)
    if isinstance(fn, _BUILTIN):
        return "call_function", fn
    method = getattr(torch.Tensor, name, None)
    if isinstance(method, _METHOD) and not hasattr(builtins, name):
        return "call_method", name
    return None


def original_target(node: fx.Node) -> Any:
    """The target ``node`` had before :func:`lean`: the aten overload a binding call stands for, or the dotted name
    of a constant; the node's own target for a node lean did not touch."""
    return node.meta.get(ORIGINAL, node.target)


def _lean_calls(g: fx.Graph) -> None:
    for n in g.nodes:
        if n.op != "call_function":
            continue
        found = binding_for(n.target)
        if found is None:
            continue
        kind, target = found
        if kind == "call_method" and not n.args:  # a method needs its tensor as the first positional argument
            continue
        n.meta[ORIGINAL] = n.target
        n.op, n.target = kind, target


def _direct_constants(gm: fx.GraphModule) -> None:
    for n in list(gm.graph.nodes):
        if n.op != "get_attr":
            continue
        if not n.users:
            gm.graph.erase_node(n)
            continue
        if "." not in n.target:
            continue
        value = attribute(gm, n.target)
        if not isinstance(value, torch.Tensor):
            continue
        flat = "_lean_" + n.target.replace(".", "_")
        if not hasattr(gm, flat):
            if isinstance(value, torch.nn.Parameter):
                gm.register_parameter(flat, value)  # the same tensor: shared, not copied
            else:
                gm.register_buffer(flat, value, persistent=False)
        n.meta[ORIGINAL] = n.target
        n.target = flat


def _children(spec) -> list:
    children = getattr(spec, "children", None)  # torch >= 2.12; children_specs is deprecated there
    return list(children()) if callable(children) else list(spec.children_specs)


def _plain_signature(gm: fx.GraphModule) -> bool:
    """Replace the pytree wrapper of an exported module by a plain signature when that changes nothing."""
    from torch.utils._pytree import TreeSpec

    codegen = gm.graph._codegen
    info = getattr(codegen, "pytree_info", None)
    if info is None:
        return False
    ins, outs = info.in_spec, info.out_spec
    # inputs: ((x0, x1, ...), {}) with every x a leaf
    if not (isinstance(ins, TreeSpec) and ins.type is tuple and len(_children(ins)) == 2):
        return False
    args, kwargs = _children(ins)
    if args.type not in (tuple, list) or not all(c.is_leaf() for c in _children(args)):
        return False
    if kwargs.type is not dict or _children(kwargs):
        return False
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    values = output.args[0]
    if outs.is_leaf():
        if not isinstance(values, (tuple, list)) or len(values) != 1:
            return False
        output.args = (values[0],)
    elif not (outs.type is tuple and all(c.is_leaf() for c in _children(outs))):
        return False
    gm.graph._codegen = fx.graph.CodeGen()
    return True


def lean(gm: fx.GraphModule) -> fx.GraphModule:
    """Make ``gm`` cheaper to call (see the module doc); in place, and returned."""
    _lean_calls(gm.graph)
    _direct_constants(gm)
    _plain_signature(gm)
    gm.graph.lint()
    gm.recompile()
    return gm
