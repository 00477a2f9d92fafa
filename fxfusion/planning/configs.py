"""Compile configurations, and what each candidate is: the rewrites or not, the layout, the configuration.

A *configuration* is how a user calls ``torch.compile``: a mode and Inductor's options.  The ones users reach for:

  default                 ``torch.compile(model)``
  freezing                Inductor's ``freezing=True`` (inference under ``no_grad``): parameters become constants,
                          BN folds into the conv, equal-shaped sibling GEMMs are concatenated, on CPU the weights are
                          prepacked
  cudagraphs              ``mode="reduce-overhead"`` (CUDA): the whole forward replayed as one CUDA graph, no host
                          launch per kernel -- what a host-bound model (decode, small batches) gains most from; its
                          outputs are overwritten by the next call
  freezing+cudagraphs     both
  max-autotune-no-cudagraphs   Inductor's autotuned GEMM templates and epilogues (minutes of compiling; on request)

A candidate's name says what it is (:class:`Spec`): ``[planned+|captured+][channels_last+]compile[+config]``, or
``eager`` / ``planned``; ``compile:<mode>`` is the older spelling of a mode (``compile:reduce-overhead`` is
``compile+cudagraphs``).  One function (:func:`build_module`) makes the module of a spec, for the measurement and for
``fxfusion.apply`` alike, so what is handed back is what was measured.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from fxfusion.errors import FxFusionError
from fxfusion.planning.prediction import Context


@dataclass(frozen=True)
class CompileConfig:
    word: str  # its name in candidate names and on the command line
    mode: str | None = None  # torch.compile's mode
    freezing: bool = False  # torch._inductor.config.freezing, at compile time
    words: str = ""  # what it is, for the candidate table
    cuda_only: bool = False

    @property
    def cudagraphs(self) -> bool:
        return self.mode == "reduce-overhead"

    @property
    def suffix(self) -> str:
        return "" if self.word == "default" else f"+{self.word}" if "-" not in self.word else f":{self.word}"

    def patch(self):
        """The Inductor options this configuration compiles under (active at the first call, when Inductor runs)."""
        return torch._inductor.config.patch(freezing=True) if self.freezing else contextlib.nullcontext()

    def compile(self, module: nn.Module) -> nn.Module:
        """``torch.compile(module)`` in this configuration, its Inductor options given to torch.compile itself: Dynamo
        reuses a frame compiled by an equal backend, and two torch.compile calls that differ only in a patched
        Inductor config compare equal -- a copy of a module compiled with freezing after one compiled by default ran
        the default's code, compiling nothing (found 2026-12-07: the freezing candidates measured so far were default
        compile again).  Options make the backends differ, so each configuration compiles its own."""
        if not self.freezing:
            return torch.compile(module, mode=self.mode, dynamic=False)
        from torch._inductor import list_mode_options

        return torch.compile(module, options={**list_mode_options(self.mode or "default"), "freezing": True},
                             dynamic=False)


CONFIGS = {c.word: c for c in (
    CompileConfig("default", words="torch.compile, default options"),
    CompileConfig("freezing", freezing=True, words="Inductor freezing: weights as constants, BN and sibling GEMMs "
                                                   "folded by Inductor (inference, no_grad)"),
    CompileConfig("cudagraphs", "reduce-overhead", words="CUDA graphs (mode='reduce-overhead'): one graph replay per "
                                                         "call, no launch per kernel", cuda_only=True),
    CompileConfig("freezing+cudagraphs", "reduce-overhead", True, words="Inductor freezing and CUDA graphs",
                  cuda_only=True),
    CompileConfig("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs",
                  words="max-autotune without CUDA graphs: autotuned GEMM templates and epilogues (slow to compile)"),
)}
ALIASES = {"reduce-overhead": "cudagraphs"}
# Tried by default (the rest on request): on CUDA all four a user reaches for, on a CPU default and freezing.
DEFAULT_CUDA = ("default", "freezing", "cudagraphs", "freezing+cudagraphs")
DEFAULT_CPU = ("default", "freezing")


def default_configs(cuda: bool) -> tuple[str, ...]:
    return DEFAULT_CUDA if cuda else DEFAULT_CPU


def parse_configs(spec: str | None, cuda: bool = True) -> tuple[str, ...]:
    """``--compile-modes``: 'default' alone, 'auto' (the defaults for the device), or a comma list of CONFIGS words
    (``reduce-overhead`` means cudagraphs); one clear error for anything else."""
    words = tuple(ALIASES.get(w.strip(), w.strip()) for w in (spec or "auto").split(",") if w.strip())
    if words == ("auto",):
        return default_configs(cuda)
    unknown = [w for w in words if w not in CONFIGS]
    if unknown or not words:
        raise FxFusionError(f"unknown --compile-modes {', '.join(unknown) or '(none)'}; choose auto or from "
                            f"{', '.join(CONFIGS)} (reduce-overhead is cudagraphs)")
    return tuple(dict.fromkeys(words))


@dataclass(frozen=True)
class Spec:
    """What a candidate is (module doc)."""

    rewrites: bool = False  # the plan's rewrites (planned...)
    captured: bool = False  # the captured graph without rewrites (captured+compile: the control)
    channels_last: bool = False
    config: CompileConfig | None = None  # None: run eagerly

    @property
    def name(self) -> str:
        if self.config is None:
            return "planned" if self.rewrites else "eager"
        head = "planned+" if self.rewrites else "captured+" if self.captured else ""
        return f"{head}{'channels_last+' if self.channels_last else ''}compile{self.config.suffix}"

    @property
    def context(self) -> Context:
        """The context the rewrites run in (fxfusion.planning.prediction)."""
        if self.config is None:
            return Context.EAGER
        return Context.COMPILED_CHANNELS_LAST if self.channels_last else Context.COMPILED

    def with_config(self, config: CompileConfig) -> "Spec":
        return Spec(self.rewrites, self.captured, self.channels_last, config)

    def words(self) -> str:
        """The candidate in words, for the table."""
        what = ("the plan's rewrites" if self.rewrites else "the captured graph, not rewritten" if self.captured
                else "the user's module")
        if self.config is None:
            return f"{what}, run eagerly"
        return f"{what}{', channels-last layout' if self.channels_last else ''}; {self.config.words}"

    @classmethod
    def parse(cls, name: str) -> "Spec":
        head, _, mode = name.partition(":")
        parts = head.split("+")
        rewrites, captured = parts[0] == "planned", parts[0] == "captured"
        parts = parts[1:] if rewrites or captured else parts
        if parts == ["eager"] and not captured:
            return cls()
        if not parts and rewrites and not mode:
            return cls(rewrites=True)
        channels_last = bool(parts) and parts[0] == "channels_last"
        parts = parts[1:] if channels_last else parts
        if not parts or parts[0] != "compile":
            raise FxFusionError(f"unknown candidate {name!r}; choose eager, planned, or [planned+|captured+]"
                                "[channels_last+]compile[+config] (compile, captured+compile, planned+compile+freezing, "
                                f"...); configs: {', '.join(CONFIGS)}")
        word = ALIASES.get(mode, mode) if mode else "+".join(parts[1:]) or "default"
        if word not in CONFIGS:
            raise FxFusionError(f"unknown configuration {word!r} in candidate {name!r}; choose from "
                                f"{', '.join(CONFIGS)}")
        return cls(rewrites, captured, channels_last, CONFIGS[word])


class Compiled(nn.Module):
    """``torch.compile(module)`` in a configuration, for ``fxfusion.apply``: the first calls run under the
    configuration's Inductor options (and under no_grad with freezing, which only applies to inference), so a
    user who calls it once gets the model that was measured."""

    def __init__(self, module: nn.Module, config: CompileConfig) -> None:
        super().__init__()
        self.config, self.compiled = config, config.compile(module)
        self.warm = False

    def forward(self, *args, **kwargs):
        if self.warm:
            return self.compiled(*args, **kwargs)
        grad = torch.no_grad() if self.config.freezing else contextlib.nullcontext()
        with self.config.patch(), grad:
            out = self.compiled(*args, **kwargs)
        self.warm = True
        return out
