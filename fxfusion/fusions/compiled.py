"""torch.compile regions: a group's nodes lifted into their own GraphModule, compiled on first call."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from torch import fx, nn

from fxfusion.graph.edit import NotApplicable, device_of



@dataclass(frozen=True)
class CompileMode:
    mode: str | None  # torch.compile's mode argument
    devices: tuple[str, ...]  # device types it runs on


# The compile variants of every pattern.  reduce-overhead captures CUDA graphs, which only exist on CUDA.
COMPILE_MODES = {"compile": CompileMode(None, ("cpu", "cuda")),
                 "compile_reduce_overhead": CompileMode("reduce-overhead", ("cuda",))}


class CompiledRegion(nn.Module):
    """A fusion group lifted into its own GraphModule and run through torch.compile (compiled on first call)."""

    def __init__(self, region: fx.GraphModule, mode: str | None) -> None:
        super().__init__()
        self.region = region
        self.mode = mode
        self.__dict__["_compiled"] = None  # not a submodule: the region's parameters are registered once

    def forward(self, *args):
        if self.__dict__["_compiled"] is None:
            self.__dict__["_compiled"] = torch.compile(self.region, mode=self.mode, dynamic=False)
        return self.__dict__["_compiled"](*args)

    def __deepcopy__(self, memo):
        return CompiledRegion(copy.deepcopy(self.region, memo), self.mode)


def rewrite_compiled(gm, nodes, group):
    from torch.fx.passes.utils.fuser_utils import fuse_by_partitions

    mode = COMPILE_MODES[group.variant].mode
    device = device_of(*nodes)
    if mode == "reduce-overhead" and device != "cuda":
        raise NotApplicable("reduce-overhead captures CUDA graphs, which exist only on CUDA")
    prefix = f"fxfusion_region_{re.sub(r'[^0-9a-zA-Z]', '_', group.site_id)}_"
    fuse_by_partitions(gm, [dict.fromkeys(nodes)], prefix=prefix)
    name = prefix + "0"
    gm.add_submodule(name, CompiledRegion(getattr(gm, name), mode))
    return None
