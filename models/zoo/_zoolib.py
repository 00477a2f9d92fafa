"""What the zoo's model files share: importing the third-party libraries safely, and seeded inputs.

Every zoo file imports its library through this module, never directly, for one reason: PyPI's torchvision wheels
are CUDA builds whose C++ extension links ``libtorch_cuda.so``.  Beside a CPU build of torch (this project's
machines: torch 2.13.0+cpu with torchvision 0.28.0) the extension cannot load, and torchvision 0.28's own
``_meta_registrations`` then registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms`` without
checking that they exist, so ``import torchvision`` raises ``RuntimeError: operator torchvision::nms does not
exist`` -- and so do ``import timm`` (which imports torchvision) and ``from transformers import GPT2Model``
(which imports torchvision when it is installed).

:func:`import_torchvision` declares those two operator schemas, with no kernel, when (and only when) that import
fails so, and imports again.  torchvision's models are plain Python and need none of its C++ ops; the ops
themselves still fail loudly (``torchvision.ops.nms`` raises "Couldn't load custom C++ ops").  With a torchvision
whose extension loads (a CUDA torch) nothing is declared.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

import torch

# The torchvision ops whose fake kernels torchvision registers unconditionally at import (schemas from its C++ code).
_UNGUARDED_OPS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _declared(op: str) -> bool:
    try:
        getattr(torch.ops.torchvision, op)
    except (AttributeError, RuntimeError):
        return False
    return True


def import_torchvision() -> ModuleType:
    """``import torchvision``, also where its C++ extension cannot load (see the module doc); ImportError if absent."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    if importlib.util.find_spec("torchvision") is None:
        raise ImportError("No module named 'torchvision'", name="torchvision")
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or "does not exist" not in str(exc):
            raise
    for op, schema in _UNGUARDED_OPS.items():
        if not _declared(op):
            torch.library.define(f"torchvision::{op}", schema)
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the failed import left its submodules behind: import them afresh
    return importlib.import_module("torchvision")


def import_library(name: str) -> ModuleType:
    """Import ``torchvision``, ``timm`` or ``transformers`` (or a submodule) for a zoo model file."""
    if importlib.util.find_spec("torchvision") is not None:
        import_torchvision()  # timm imports it, and transformers does when it is installed
    return importlib.import_module(name)


def images(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))  # (B, 3, H, W)


def token_ids(batch: int, seq: int, vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))  # (B, T) int64


class LastHiddenState(torch.nn.Module):
    """A Hugging Face base model called with token ids, returning the plain tensor ``last_hidden_state``.

    ``use_cache=False`` (no KV cache is built or returned) and ``return_dict=True``, so the output is always the
    named field, whatever the config says.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, hidden)
        return self.model(input_ids=input_ids, use_cache=False, return_dict=True).last_hidden_state
