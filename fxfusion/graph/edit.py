"""What every rewrite rule shares: the NotApplicable signal and small readers and editors of fx nodes.

A rewrite rule (the ``rewrite`` of a pattern's manual variant, :class:`fxfusion.fusions.base.ManualVariant`) takes
``(gm, nodes, group)``, reads the site's structure from ``nodes`` (in topological order), checks its legality and
inserts the variant's nodes; it returns ``(old, new)`` -- the node whose users now read ``new`` --, a list of such
pairs for a site with several outputs (sibling GEMMs merged into one: each sibling's output becomes a slice of it),
or None when it rewired the graph itself (compile regions).  It raises :class:`NotApplicable` (one sentence) before inserting
anything when the group cannot or must not be rewritten.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Sequence

import torch
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx

aten = torch.ops.aten


class NotApplicable(Exception):
    """A group this rewrite cannot (or must not) apply; the message is the reason, one sentence."""


def is_call(node: Any, *targets) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def value_of(node: Any):
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def shape_of(node: Any) -> tuple[int, ...] | None:
    v = value_of(node)
    return tuple(int(s) for s in v.shape) if isinstance(v, torch.Tensor) else None


# Where a graph module keeps the tensors bound to its lifted parameters, and their names in the model: outside its
# state (not a buffer, never copied into a compiled or saved module), written by bind_constants and read by constant()
# and parameter_name().
_CONSTANTS, _NAMES = "_fxfusion_constants", "_fxfusion_constant_names"
# The call_module a runnable graph checks its inputs with (fxfusion.graph.runnable.InputGuard): it reads every input,
# the lifted parameters included, for their shapes only -- no computation of the graph reads a value through it.
INPUT_GUARD = "_fxfusion_input_guard"


# What a node inserted in another's place takes over from it: its recorded value, shape and where it came from.
KEPT_META = ("val", "tensor_meta", "stack_trace", "nn_module_stack")


def copy_meta(new: fx.Node, old: fx.Node) -> None:
    """``new`` stands for ``old``'s value: it takes over :data:`KEPT_META` from it."""
    new.meta.update({k: v for k, v in old.meta.items() if k in KEPT_META})


def bind_constants(gm: fx.GraphModule, tensors: dict[str, torch.Tensor], names: dict[str, str] | None = None) -> None:
    """Bind the model's tensors to ``gm``'s placeholders by name (lifted parameters of a Dynamo subgraph), so that a
    rewrite can read them as constants (BatchNorm folding); ``names`` gives each placeholder the model's name of its
    parameter (``CapturedModel.parameters``), so rules that ask which nodes read a parameter see it however it
    arrives."""
    gm.__dict__[_CONSTANTS] = dict(tensors)
    gm.__dict__[_NAMES] = {ph: names[ph] for ph in tensors if ph in (names or {})}


def bound_constants(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    return gm.__dict__.get(_CONSTANTS, {})


def bound_names(gm: fx.GraphModule) -> dict[str, str]:
    return gm.__dict__.get(_NAMES, {})


def attribute(gm: fx.GraphModule, target: str) -> Any:
    """What a ``get_attr`` of ``target`` reads from ``gm`` (a dotted path through its submodules)."""
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def constant(gm: fx.GraphModule, node: Any, what: str) -> torch.Tensor | None:
    """The constant tensor behind a get_attr node, or a placeholder bound by :func:`bind_constants` (None for a None
    argument)."""
    if node is None:
        return None
    constants = bound_constants(gm)
    if isinstance(node, fx.Node) and node.op == "placeholder" and node.name in constants:
        return constants[node.name].detach()
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        raise NotApplicable(f"the {what} is not a constant of the module (it is {getattr(node, 'op', node)!r}), "
                            "so it cannot be folded at load time")
    return attribute(gm, node.target).detach()


def parameter_name(gm: fx.GraphModule, node: Any) -> str | None:
    """The model's name of the parameter or buffer behind ``node``: a get_attr's target, or the name bound to a lifted
    placeholder by :func:`bind_constants`; None for any other value."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "get_attr":
        return str(node.target)
    return bound_names(gm).get(node.name) if node.op == "placeholder" else None


def readers(gm: fx.GraphModule, node: fx.Node) -> list[fx.Node]:
    """The nodes that compute with ``node``'s value -- for a parameter, through any node of ``gm`` that stands for it
    (several get_attr of one attribute, a lifted placeholder) -- in graph order; the input guard, which only checks
    shapes, is not one."""
    name = parameter_name(gm, node)
    out: dict[fx.Node, None] = {}
    for n in gm.graph.nodes:
        if n is node or (name is not None and parameter_name(gm, n) == name):
            out.update((u, None) for u in n.users if not (u.op == "call_module" and u.target == INPUT_GUARD))
    return list(out)


def add_constant(gm: fx.GraphModule, site_id: str, name: str, tensor: torch.Tensor, like: Any = None) -> fx.Node:
    """``tensor`` computed at rewrite time ("at load": weights concatenated, a zero bias) as a new buffer of ``gm``,
    and a get_attr node reading it, inserted at the graph's current insertion point.  The node's recorded value is
    made in the tracing session of ``like``'s (a node of the site), so :func:`emit_traced` can trace through it.
    The original parameters are untouched, so any other path that reads them is unchanged; a rewrite that is then
    refused has its buffers removed by the driver (:func:`fxfusion.planning.rewrite.rewrite_group`)."""
    attr = f"_fxfusion_{re.sub(r'[^0-9a-zA-Z]', '_', site_id)}_{name}"
    tensor = tensor.detach().contiguous()
    gm.register_buffer(attr, tensor)
    node = gm.graph.get_attr(attr)
    mode = getattr(value_of(like), "fake_mode", None)
    node.meta["val"] = mode.from_tensor(tensor, static_shapes=True) if mode is not None else tensor
    return node


def scalar(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def device_of(*nodes) -> str:
    for n in nodes:
        v = value_of(n)
        if isinstance(v, torch.Tensor):
            return v.device.type
    return "cpu"


def is_pure(node: fx.Node) -> bool:
    """An aten op that neither mutates its inputs nor draws random numbers: safe to evaluate ahead or to drop."""
    t = node.target
    if node.op != "call_function" or not isinstance(t, torch._ops.OpOverload):
        return False
    return not t._schema.is_mutable and torch.Tag.nondeterministic_seeded not in t.tags


# Evaluating a constant subgraph ahead of time is worth it for masks (a few slices and a comparison); past this many
# nodes the value is left to run time.
CONSTANT_NODE_BUDGET = 32


# What a leaf function of :func:`evaluate_ahead` returns for a node it cannot see through, and for one to evaluate
# from its inputs.
UNKNOWN, COMPUTE = object(), object()


def evaluate_ahead(node: Any, leaf: Callable[[fx.Node], Any], budget: int,
                   pure: Callable[[fx.Node], bool] = is_pure) -> Any:
    """The value of ``node`` evaluated ahead of run time, or :data:`UNKNOWN`: ``leaf(n)`` gives each node's value,
    UNKNOWN (nothing is proved through it), or COMPUTE (a ``pure`` call evaluated from its inputs); at most ``budget``
    nodes.  Constant masks and size-only values (fxfusion.graph.symbolic) are both this walk with their own leaves."""
    values: dict[fx.Node, Any] = {}

    def visit(n: fx.Node) -> bool:
        if n in values:
            return True
        if len(values) >= budget:
            return False
        v = leaf(n)
        if v is not COMPUTE:
            values[n] = v
            return v is not UNKNOWN
        if not pure(n) or not all(visit(a) for a in n.all_input_nodes):
            return False
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: values[a])
        values[n] = n.target(*args, **kwargs)
        return True

    with torch.no_grad():
        return values[node] if visit(node) else UNKNOWN


def constant_value(gm: fx.GraphModule, node: Any, budget: int = CONSTANT_NODE_BUDGET) -> torch.Tensor | None:
    """The value of ``node`` when it depends only on the module's constants and literals (None otherwise), evaluated
    when that takes at most ``budget`` nodes."""
    def leaf(n: fx.Node) -> Any:
        if n.op == "get_attr" or (n.op == "placeholder" and n.name in bound_constants(gm)):
            return constant(gm, n, "constant")
        return COMPUTE

    if not isinstance(node, fx.Node):
        return None
    value = evaluate_ahead(node, leaf, budget)
    return value if isinstance(value, torch.Tensor) else None


def emit_traced(g: fx.Graph, fn: Callable[..., torch.Tensor], args: Sequence[fx.Node], before: fx.Node,
                pre_dispatch: bool = False) -> fx.Node:
    """``fn(*args)`` traced to aten ops and inserted before ``before``; returns the node of its result.

    This is how a fusion's computation is written once: the family calls ``fn`` on tensors to measure the variant,
    and its rewrite traces the very same function into the graph (as Inductor's ``register_replacement`` traces a
    replacement function).  Tracing runs on the nodes' own fake values, so the new nodes carry shapes, dtypes and
    devices like the captured ones; only the nodes the result depends on are inserted.  ``pre_dispatch`` traces at
    the level torch.export captures at, where composite ops stay one node (``scaled_dot_product_attention`` instead of
    the kernel this device would pick, ``reshape`` instead of ``view``/``_unsafe_view``).
    """
    vals = [value_of(a) for a in args]
    if not all(isinstance(v, torch.Tensor) for v in vals):
        raise NotApplicable("an input of the fused computation has no recorded value to trace it with")
    modes = {id(m): m for m in (getattr(v, "fake_mode", None) for v in vals) if m is not None}
    if len(modes) > 1:
        raise NotApplicable("the inputs' recorded values come from different tracing sessions")
    with (next(iter(modes.values())) if modes else contextlib.nullcontext()), torch.no_grad():
        traced = make_fx(fn, tracing_mode="real", pre_dispatch=pre_dispatch)(*vals)
    out = next(n for n in traced.graph.nodes if n.op == "output").args[0]
    if not isinstance(out, fx.Node):
        raise NotApplicable("the fused computation returns no tensor")
    needed, stack = set(), [out]
    while stack:  # the nodes the result depends on (make_fx also records detach nodes nothing reads)
        n = stack.pop()
        if n not in needed:
            needed.add(n)
            stack.extend(n.all_input_nodes)
    env = dict(zip([n for n in traced.graph.nodes if n.op == "placeholder"], args))
    with g.inserting_before(before):
        for n in traced.graph.nodes:
            if n.op == "call_function" and n in needed:
                env[n] = g.node_copy(n, lambda a: env[a])
    return env[out]


def drop_unused_attributes(gm: fx.GraphModule) -> list[str]:
    """Delete the parameters, buffers and tensor attributes of ``gm`` that no ``get_attr`` node reads any more (a
    folded convolution's original weight and its BatchNorm's statistics, the separate weights of merged sibling GEMMs),
    then the submodules left empty; returns the names deleted.  A planned model then holds the tensors it runs with,
    not those beside the ones it replaced; ``gm`` must be the only module holding its attribute tree (a copy)."""
    read = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    used_modules = {n.target for n in gm.graph.nodes if n.op == "call_module"}

    def needed(name: str) -> bool:
        return name in read or any(name.startswith(m + ".") for m in used_modules)

    names = [n for n, _ in gm.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in gm.named_buffers(remove_duplicate=False)]
    names += [f"{p}.{k}" if p else k for p, sub in gm.named_modules() for k, v in vars(sub).items()
              if isinstance(v, torch.Tensor) and not k.startswith("_")]
    dropped = []
    for name in dict.fromkeys(names):
        if needed(name):
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        if hasattr(owner, attr):
            delattr(owner, attr)
            dropped.append(name)
    if dropped:
        gm.delete_all_unused_submodules()
    return dropped
