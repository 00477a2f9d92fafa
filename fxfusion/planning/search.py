"""Which candidates to build: the compile configurations a user reaches for, searched within a budget, not crossed.

Every configuration with and without the rewrites, in both layouts, is up to 16 compiles of the whole model -- minutes
on a GPU, most of them wasted.  :func:`build_candidates` builds them in three steps, cheap signals first:

  1. the whole model in each configuration of the CandidateSet (``compile`` first: the baseline everything is
     compared with), CUDA graphs first after it (with freezing, then without) where the model is *host-bound* -- its
     captured graph's ops x ``HOST_US_PER_OP`` reach ``HOST_BOUND_SHARE`` of one eager forward pass; freezing only
     for a model in eval mode
     (Inductor freezes only for inference); each checked against float64 as it is built (outputs cloned first: a CUDA
     graph's outputs are overwritten by the next call);
  2. where two or more configurations verified, a short interleaved run (``RANK_SPEC``) ranks them: the best one --
     the default unless another beats it by more than ``MIN_EFFECT`` -- is the configuration the rewrites are also
     tried in;
  3. the rewrites: planned + compile (and planned + channels-last + compile on a conv model) in the default
     configuration -- the compiled regime predicts them -- and again in the best configuration when it is another;
     the captured graph compiled as the rewrites' control.
Whatever is not built is said, with why (``not_tried``): the budget spent (``deadline``), a configuration the device
lacks, a combination ranked out in step 2.  Whole-model default compile is built even past the deadline: it is what
a user gets by flipping one flag, the floor the chosen candidate is held to.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils._pytree import tree_map

from fxfusion.calibration.variants import compile_limits
from fxfusion.measure.devices import is_cuda
from fxfusion.measure.stats import MIN_EFFECT, summarize
from fxfusion.measure.timing import Clock, TimingSpec, measure
from fxfusion.planning import candidates as candidates_module
from fxfusion.planning.apply import candidate_module
from fxfusion.planning.candidates import (CAPTURED_COMPILE, CHANNELS_LAST_COMPILE, PLANNED, Built, CandidateSet,
                                         has_conv2d)
from fxfusion.planning.configs import CONFIGS, Spec
from fxfusion.planning.prediction import Context

# One aten op in a forward pass costs the host about this much (Python dispatch and a kernel launch); a model whose
# ops x this reach HOST_BOUND_SHARE of its eager time is host-bound: CUDA graphs are tried before the other options,
# freezing + CUDA graphs first.  0.3, not 0.5: Qwen2's one-token step over a KV cache on an H100 (2026-12-08, 329 ops
# = 2.63 ms by this count, 40% of the 6.66 ms a token the generation loop read, CUDA graphs 13x faster: a module's
# Python between the ops costs the host as much again) read device-bound at 0.5, so the --apply budget ran out before
# freezing + CUDA graphs, the fastest configuration, was built (docs/results/gpu-2026-12-08).
HOST_US_PER_OP, HOST_BOUND_SHARE = 8.0, 0.3
LOG = logging.getLogger("fxfusion.planning")
# The configurations' ranking run: short -- it picks which configuration the rewrites are tried in, not the winner.
RANK_SPEC = TimingSpec(rounds=8, warmup=1, target_sample_s=0.02, budget_s=10.0)


@dataclass
class Search:
    built: dict[str, Built] = field(default_factory=dict)
    verified: dict[str, bool] = field(default_factory=dict)
    kept: dict[str, list] = field(default_factory=dict)  # a rewritten candidate -> the groups it applies
    not_tried: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not built
    best_config: str = "default"
    ranking: dict[str, float] = field(default_factory=dict)  # configuration candidate -> median ms in step 2
    host_bound: bool | None = None
    ops: int = 0  # the captured graphs' aten calls, and the eager pass they are compared with (the host-bound signal)
    eager_ms: float | None = None

    def host_line(self) -> str | None:
        """The host-bound signal in words, for the explanation (None where it was not measured)."""
        if self.host_bound is None or not self.eager_ms:
            return None
        host = self.ops * HOST_US_PER_OP * 1e-3
        return (f"host-bound: {'yes' if self.host_bound else 'no'} -- {self.ops} ops x {HOST_US_PER_OP:g} us = "
                f"{host:.3f} ms, {host / self.eager_ms:.0%} of an eager pass of {self.eager_ms:.3f} ms (from "
                f"{HOST_BOUND_SHARE:.0%}: CUDA graphs built first)")


def op_count(plan) -> int:
    return sum(1 for g in plan.captured.graphs for n in g.graph.nodes if n.op == "call_function")


def host_bound(plan, eager_ms: float | None, ops: int | None = None) -> bool | None:
    ops = op_count(plan) if ops is None else ops
    return None if not eager_ms else ops * HOST_US_PER_OP * 1e-3 >= HOST_BOUND_SHARE * eager_ms


def config_order(words: tuple[str, ...], host_bound: bool | None) -> list[str]:
    """The order the whole-model configurations are built in: ``default`` first (the floor); for a host-bound model
    the CUDA-graph ones next, the one with freezing before the one without (the fastest configuration of every
    host-bound model measured on the cards: Llama, Qwen2 and GPT-2 decoding, GPT-2 8x512); else ``words``' order."""
    return sorted(words, key=lambda w: (w != "default", not (host_bound and CONFIGS[w].cudagraphs),
                                        not (host_bound and CONFIGS[w].freezing)))


def build_candidates(model, inputs: tuple, plan, planned, applied: set[str], candidates: CandidateSet, device,
                     check: Callable, clock: Clock, said: list[str], captured_ok: bool = True,
                     compile_fn: Callable | None = None, deadline: float | None = None,
                     eager_ms: float | None = None, longest_build_s: float = 0.0) -> Search:
    """Build (compile and check) the candidates of ``candidates`` by the steps of the module doc.  ``check(out)``
    says why a candidate's outputs are wrong (empty: they verify); ``planned`` is the model with every group
    applied; ``eager_ms`` one eager forward pass (the host-bound signal); ``longest_build_s`` the longest compile of
    the model before this search (the budget's estimate of a build until one is made here)."""
    compile_model = compile_fn or candidates_module.compile_model
    cuda = is_cuda(device)
    ops = op_count(plan)
    found = Search(kept={PLANNED: [g for g in plan.groups_for(Context.EAGER) if g.id in applied]},
                   host_bound=host_bound(plan, eager_ms, ops), ops=ops, eager_ms=eager_ms)

    longest = longest_build_s  # the longest build so far: one that would end past the deadline is not started

    def build(spec: Spec, why_not: str | None = None) -> None:
        nonlocal longest
        floor = spec.config is not None and spec.config.word == "default" and not (spec.rewrites or spec.captured or spec.channels_last)
        now = time.perf_counter()
        if not why_not and deadline is not None and not floor and now + longest > deadline:
            why_not = "the --apply budget was spent before it" if now > deadline else (
                f"the --apply budget would be spent before it was built ({deadline - now:.0f} s left, the longest "
                f"build so far took {longest:.0f} s)")
        if why_not:
            found.not_tried[spec.name] = why_not
            return
        start = time.perf_counter()
        module = candidate_module(spec, model, plan, planned)
        b = compile_model(spec.name, module, inputs, device, spec.config, record_post_grad=spec.config.word ==
                          "default" and not spec.captured)
        found.built[spec.name] = b
        if spec.rewrites:
            found.kept[spec.name] = [g for g in plan.groups_for(spec.context) if g.id in applied]
            _left_out(plan, spec, said)
        if b.status == "ok":
            with torch.no_grad():
                out = tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, b.run())
            failure = check(out)
            found.verified[spec.name] = not failure
            if failure:
                said.append(f"{spec.name}: outputs do not match ({failure}); it cannot be chosen")
        longest = max(longest, time.perf_counter() - start)
        LOG.info("--apply: candidate %s %s, %.1f s", spec.name, "built" if b.status == "ok" else b.status,
                 time.perf_counter() - start)

    words = candidates.config_words(cuda)
    skipped = {w: f"{CONFIGS[w].word} needs CUDA" for w in (candidates.configs or ()) if w not in words}
    if model.training:
        skipped.update({w: "the model is in training mode: Inductor freezes only for inference"
                        for w in words if CONFIGS[w].freezing})
    for w in config_order(words, found.host_bound):  # step 1
        build(Spec(config=CONFIGS[w]), skipped.get(w))
    for w, why in skipped.items():
        found.not_tried.setdefault(Spec(config=CONFIGS[w]).name, why)
    conv = has_conv2d(model)
    if CHANNELS_LAST_COMPILE in candidates.optional and conv:
        build(Spec(channels_last=True, config=CONFIGS["default"]))
    _rank(found, words, inputs, clock)  # step 2
    best = CONFIGS[found.best_config]
    for name in candidates.planned_compiled() if applied else ():  # step 3
        spec = Spec.parse(name)
        if spec.channels_last and not conv:
            continue
        build(spec)
        if best.word != "default":
            build(spec.with_config(best))
        for w in words:
            if w not in ("default", best.word):
                alone = Spec(config=CONFIGS[w]).name
                found.not_tried[spec.with_config(CONFIGS[w]).name] = (
                    f"{alone} ranked below compile{best.suffix} on the whole model: the rewrites were tried in the "
                    "best configuration only" if alone in found.ranking else
                    f"{alone} itself was not tried ({found.not_tried[alone]})" if alone in found.not_tried else
                    f"{alone} did not build or verify")
    if CHANNELS_LAST_COMPILE in candidates.optional and conv and best.word != "default" and applied:
        build(Spec(channels_last=True, config=best))
    if CAPTURED_COMPILE in candidates.optional and captured_ok and applied:
        # the captured graph compiled without rewrites: planned + compile's control, and a candidate of its own
        build(Spec(captured=True, config=CONFIGS["default"]))
    return found


def _rank(found: Search, words: tuple[str, ...], inputs, clock: Clock) -> None:
    """Step 2: the verified whole-model configurations timed briefly, interleaved; the fastest is the best one."""
    names = {Spec(config=CONFIGS[w]).name: w for w in words}
    ready = {n: found.built[n].run for n in names if found.verified.get(n)}
    if len(ready) < 2:
        found.best_config = next((names[n] for n in ready), "default")
        return
    with torch.no_grad(), compile_limits():
        samples = measure(ready, clock, RANK_SPEC)
    found.ranking = {n: summarize(s).median * 1e3 for n, s in samples.seconds.items()}
    fastest = min(found.ranking.values())
    # the simplest configuration (CONFIGS' order: default, freezing, cudagraphs, both) within MIN_EFFECT of the fastest
    # is the rewrites': within that, the ranking run's noise would pick (the same compiled code read 0.2-2.3% apart on
    # this CPU and 0.7589 against 0.7592 ms for Qwen2 on an H100, 2026-12-07: freezing then reused the default's frame)
    order = list(CONFIGS)
    near = [n for n, ms in found.ranking.items() if ms < (1 + MIN_EFFECT) * fastest]
    found.best_config = min((names[n] for n in near), key=order.index)


def _left_out(plan, spec: Spec, said: list[str]) -> None:
    kept = plan.groups_for(spec.context)
    if len(kept) == len(plan.groups):
        return
    dropped = ", ".join(sorted({g.id for g in plan.groups} - {g.id for g in kept}))
    where = " in channels-last" if spec.channels_last else ""
    line = (f"{spec.name} leaves out {dropped}: compiled{where}, the model is not faster with those rewrites beyond "
            "the noise (or, where not measured so, their regions are slower)")
    if line not in said:
        said.append(line)
