"""Loading a user's model file: the convention, the moves to a device and dtype, and one-line errors.

The convention (docs/analyze.md), in the order it is tried:
  1. ``path.py:NAME``: ``NAME()`` returns ``(model, example_inputs)``;
  2. ``path.py``: the file defines ``get_model()`` and ``get_inputs()``.
``model`` is an ``nn.Module``; ``example_inputs`` is a tensor or a tuple/list of tensors (the positional arguments
of ``model(...)``).  Floating-point parameters, buffers and inputs move to ``dtype``; everything moves to ``device``.
Finally the model runs once on the inputs, so inputs that do not fit the model fail here, with the model's own
message, and not deep inside capture.

Every failure is an :class:`FxFusionError` of one line: missing file, a file that raises on import (its exception
shown), nothing model-like found, inputs that do not fit.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fxfusion.errors import FxFusionError
from fxfusion.measure.devices import dtype_name

CONVENTION = "define get_model() and get_inputs(), or name a callable returning (model, example_inputs) as FILE.py:NAME"
_counter = itertools.count()


@dataclass
class LoadedModel:
    model: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    path: Path
    entry: str  # how the model was obtained: "get_model()+get_inputs()" or "NAME()"
    training: bool  # the model's mode as analysed (BatchNorm in training mode cannot be folded)


def exception_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def a_type(value: Any) -> str:
    """``a list``, ``an int``: the article a type name takes in a message."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def split_spec(spec: str) -> tuple[Path, str | None]:
    """'models/x.py:build' -> (Path('models/x.py'), 'build'); 'models/x.py' -> (..., None).  Windows drives kept."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail and tail.isidentifier() and head and not head.endswith(("\\", "/")) and len(head) > 1:
        return Path(head), tail
    return Path(spec), None


def check_model_file(spec: str | Path) -> Path:
    """The model file of ``FILE.py[:NAME]``, checked to be an existing Python file (one line if not), before any
    work is done or announced."""
    path, _ = split_spec(str(spec))
    if not path.exists():
        raise FxFusionError(f"model file {path} does not exist")
    if not path.is_file():
        raise FxFusionError(f"model file {path} is not a file")
    if path.suffix != ".py":
        raise FxFusionError(f"model file {path} is not a Python file (.py)")
    return path


def import_file(path: Path) -> Any:
    """Import a Python file as a fresh module; its folder is importable meanwhile (for sibling imports)."""
    check_model_file(path)
    name = f"_fxfusion_user_model_{next(_counter)}_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit included: a script's exit() must not end the tool
        sys.modules.pop(name, None)
        raise FxFusionError(f"importing {path} raised {exception_line(exc)}") from None
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    return module


def _call(path: Path, label: str, fn: Any) -> Any:
    if not callable(fn):
        raise FxFusionError(f"{path}: {label} is {a_type(fn)}, not a callable")
    try:
        return fn()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise FxFusionError(f"{path}:{label}() raised {exception_line(exc)}") from None


def as_example_inputs(value: Any, source: str = "example_inputs", verb: str = "holds") -> tuple[torch.Tensor, ...]:
    """The one normalisation of example inputs, for the CLI's model files and the library alike: a tensor, or a
    tuple or list of tensors (the positional arguments of ``model(...)``), becomes a tuple; anything else is one
    line naming ``source``."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not items:
        raise FxFusionError(f"{source} {verb} no example inputs; give a tensor or a tuple (or list) of tensors")
    for i, item in enumerate(items):
        if not isinstance(item, torch.Tensor):
            raise FxFusionError(f"{source} {verb} {a_type(item)} as input {i}; example inputs must be tensors (the "
                                "positional arguments of model(...))")
    return items


def _as_inputs(path: Path, label: str, value: Any) -> tuple[torch.Tensor, ...]:
    return as_example_inputs(value, f"{path}: {label}", "returned")


def _as_model(path: Path, label: str, value: Any) -> torch.nn.Module:
    if not isinstance(value, torch.nn.Module):
        raise FxFusionError(f"{path}: {label} returned {a_type(value)}, not a torch.nn.Module; {CONVENTION}")
    return value


def _find(path: Path, module: Any, name: str | None) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], str]:
    if name is not None:
        if not hasattr(module, name):
            raise FxFusionError(f"{path} has no {name!r}; {CONVENTION}")
        out = _call(path, name, getattr(module, name))
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise FxFusionError(f"{path}:{name}() returned {a_type(out)}; expected (model, example_inputs)")
        return _as_model(path, f"{name}()", out[0]), _as_inputs(path, f"{name}()", out[1]), f"{name}()"
    has_model, has_inputs = hasattr(module, "get_model"), hasattr(module, "get_inputs")
    if not (has_model and has_inputs):
        found = "defines get_model() but no get_inputs()" if has_model else (
            "defines get_inputs() but no get_model()" if has_inputs else "defines no model")
        raise FxFusionError(f"{path} {found}; {CONVENTION}")
    model = _as_model(path, "get_model()", _call(path, "get_model", module.get_model))
    inputs = _as_inputs(path, "get_inputs()", _call(path, "get_inputs", module.get_inputs))
    return model, inputs, "get_model()+get_inputs()"


def move(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], device: str,
         dtype: torch.dtype | None) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Module.to moves only floating-point parameters and buffers to ``dtype``; inputs follow the same rule."""
    try:
        model = model.to(device=device) if dtype is None else model.to(device=device, dtype=dtype)
        inputs = tuple(t.to(device=device, dtype=dtype) if dtype is not None and t.is_floating_point()
                       else t.to(device=device) for t in inputs)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise FxFusionError(f"cannot move the model to {device}"
                            f"{f' as {dtype}' if dtype else ''}: {exception_line(exc)}") from None
    return model, inputs


def check_inputs(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    # A training-mode forward updates BatchNorm running statistics: the check must leave the model as it found it.
    saved = [(b, b.clone()) for b in model.buffers()] if model.training else []
    try:
        with torch.no_grad():
            model(*inputs)
            for buffer, value in saved:
                buffer.copy_(value)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        shapes = ", ".join(f"{tuple(t.shape)} {dtype_name(t.dtype)}" for t in inputs)
        raise FxFusionError(f"the example inputs of {path} do not fit the model ({shapes}): "
                            f"{exception_line(exc)}") from None


def load_model(spec: str | Path, device: str = "cpu", dtype: torch.dtype | None = None,
               eval_mode: bool = False) -> LoadedModel:
    """Load ``FILE.py`` (get_model/get_inputs) or ``FILE.py:NAME``, move it, and check one forward pass runs."""
    path, name = split_spec(str(spec))
    module = import_file(path)
    model, inputs, entry = _find(path, module, name)
    model, inputs = move(model, inputs, device, dtype)
    if eval_mode:
        model.eval()
    check_inputs(model, inputs, path)
    return LoadedModel(model=model, example_inputs=inputs, path=path, entry=entry, training=model.training)
