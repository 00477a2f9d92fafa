"""The rewrite rules: variant name -> the function that rewrites a group's nodes into that variant.

A rule takes ``(gm, nodes, group)``, reads the site's structure from ``nodes`` (in topological order), checks its
legality and inserts the variant's nodes; it returns ``(old, new)`` -- the node whose users now read ``new`` -- or
None when it rewired the graph itself (compile regions).  It raises :class:`NotApplicable` (one sentence) before
inserting anything when the group cannot or must not be rewritten.
"""

from __future__ import annotations

from typing import Callable

from fxfusion.rewrites.attention import rewrite_baddbmm_scale, rewrite_sdpa
from fxfusion.rewrites.compiled import COMPILE_MODES, CompiledRegion, rewrite_compiled
from fxfusion.rewrites.conv import rewrite_bn_folded, rewrite_channels_last, rewrite_conv_relu_fused
from fxfusion.rewrites.graph import NotApplicable
from fxfusion.rewrites.linear import rewrite_addmm, rewrite_addmm_epilogue
from fxfusion.rewrites.norm import rewrite_rms_norm, rewrite_triton_add_layernorm

REWRITES: dict[str, Callable] = {
    "addmm": rewrite_addmm,
    "addmm_epilogue": rewrite_addmm_epilogue,
    "bn_folded": rewrite_bn_folded,
    "conv_relu_fused": rewrite_conv_relu_fused,
    "channels_last": rewrite_channels_last,
    "sdpa": rewrite_sdpa,
    "baddbmm_scale": rewrite_baddbmm_scale,
    "rms_norm_op": rewrite_rms_norm,
    "triton_add_layernorm": rewrite_triton_add_layernorm,
    "compile": rewrite_compiled,
    "compile_reduce_overhead": rewrite_compiled,
}

__all__ = ["REWRITES", "NotApplicable", "CompiledRegion", "COMPILE_MODES"]
