"""Compile configurations as candidates (fxfusion.planning.configs, search, explain): names, the search's order and
pruning within a budget, the choice against the best whole-model configuration, and a real freezing compile."""

from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

from fxfusion.errors import FxFusionError
from fxfusion.graph.loader import load_model
from fxfusion.planning.apply import apply
from fxfusion.planning.candidates import Built, CandidateSet, choose, parse_compile_modes
from fxfusion.planning.configs import CONFIGS, Spec, parse_configs
from fxfusion.planning.explain import explain
from fxfusion.planning.search import build_candidates, config_order
from fxfusion.planning.verify import Timing, verify_plan
from tests.helpers import MODELS, TINY_SPEC, OpCountClock, typical_plan

NAMES = ["eager", "planned", "compile", "compile+freezing", "compile+cudagraphs", "compile+freezing+cudagraphs",
         "compile:max-autotune-no-cudagraphs", "captured+compile", "planned+compile", "planned+compile+freezing",
         "channels_last+compile", "planned+channels_last+compile+freezing+cudagraphs"]


@pytest.mark.parametrize("name", NAMES)
def test_a_candidate_name_reads_back_as_itself(name):
    assert Spec.parse(name).name == name and Spec.parse(name).words()


def test_the_old_spelling_of_a_mode_is_its_configuration_and_unknown_names_are_one_line():
    assert Spec.parse("compile:reduce-overhead") == Spec.parse("compile+cudagraphs")
    for bad in ("compile+turbo", "planned+fast", "eager+compile", "captured"):
        with pytest.raises(FxFusionError, match="unknown"):
            Spec.parse(bad)


def test_the_configurations_tried_by_default_depend_on_the_device():
    assert parse_configs("auto", cuda=True) == ("default", "freezing", "cudagraphs", "freezing+cudagraphs")
    assert parse_configs(None, cuda=False) == ("default", "freezing")
    assert parse_compile_modes("freezing,reduce-overhead") == ("freezing", "cudagraphs")
    with pytest.raises(FxFusionError, match="unknown --compile-modes turbo"):
        parse_configs("default,turbo")
    assert CandidateSet().config_words(cuda=False) == ("default", "freezing")
    assert CandidateSet(configs=("cudagraphs", "default")).config_words(cuda=False) == ("default",)


def _fake_compile(log: list):
    """compile_model without Inductor: the module run eagerly, each build logged with its configuration."""
    def fake(name, module, inputs, device, config, record_post_grad=False):
        log.append((name, getattr(config, "word", config)))
        return Built(name, lambda: module(*inputs), setup_s=0.0)
    return fake


def _search(candidates: CandidateSet, deadline=None, training=False, clock=None):
    loaded = load_model(MODELS / "resnet_basic.py")
    model = loaded.model.train(training)
    plan = typical_plan("resnet_basic")
    log: list = []
    said: list[str] = []
    found = build_candidates(model, loaded.example_inputs, plan, apply(model, plan), {g.id for g in plan.groups},
                             candidates, "cpu", lambda out: "", clock or OpCountClock(), said,
                             compile_fn=_fake_compile(log), deadline=deadline)
    return found, log


def test_the_search_builds_each_configuration_then_the_rewrites_in_the_best_one_and_says_what_it_left_out():
    found, log = _search(CandidateSet(configs=("default", "freezing", "cudagraphs")))
    built = [name for name, _ in log]
    assert built[:2] == ["compile", "compile+freezing"]  # default first: the baseline everything is compared with
    assert found.not_tried["compile+cudagraphs"] == "cudagraphs needs CUDA"
    assert set(found.ranking) == {"compile", "compile+freezing"}
    # the two run the same ops under the op-count clock: within MIN_EFFECT of each other, the default is kept
    assert found.best_config == "default"
    best = CONFIGS[found.best_config]
    assert "planned+compile" in built and f"planned+compile{best.suffix}" in built
    assert "captured+compile" in built and all(found.verified.values())
    other = "freezing" if found.best_config == "default" else None
    if other:  # the configuration ranked below is not combined with the rewrites, and the table says so
        assert "ranked below" in found.not_tried[f"planned+compile+{other}"]


def test_freezing_is_not_tried_on_a_model_in_training_mode():
    found, log = _search(CandidateSet(configs=("default", "freezing"), optional=()), training=True)
    assert [name for name, _ in log] == ["compile"]
    assert "training mode" in found.not_tried["compile+freezing"]


def test_a_spent_budget_leaves_the_rest_untried_with_the_reason_but_builds_default_compile():
    found, log = _search(CandidateSet(configs=("default", "freezing")), deadline=time.perf_counter() - 1)
    # whole-model default compile is the floor (what flipping one flag gives): built even past the deadline
    assert [name for name, _ in log] == ["compile"] and set(found.built) == {"compile"}
    spent = "the --apply budget was spent before it"
    assert found.not_tried["planned+compile"] == found.not_tried["compile+freezing"] == spent
    assert found.not_tried["planned+compile+freezing"] == f"compile+freezing itself was not tried ({spent})"
    assert "compile" not in found.not_tried


def test_measuring_stages_leave_the_candidates_their_share_of_the_whole_budget():
    from fxfusion.planning.pipeline import CANDIDATES_SHARE, Planner, Run

    p = Planner(total_s=100.0, budget_s=1000.0)
    run = Run(model=None, example_inputs=(), analysis=None)
    assert (1 - CANDIDATES_SHARE) * 100 - 1 < run.budget(p) <= (1 - CANDIDATES_SHARE) * 100
    run.started -= (1 - CANDIDATES_SHARE) * 100  # the measuring share spent: nothing left to measure with
    assert run.budget(p) == 0.0
    assert Run(model=None, example_inputs=(), analysis=None).budget(Planner(budget_s=7.0)) == 7.0  # no bound


def test_the_measuring_share_is_split_equally_among_the_stages_still_to_come():
    from fxfusion.planning.pipeline import CANDIDATES_SHARE, Planner, Run

    p, share = Planner(total_s=90.0, budget_s=1000.0), (1 - CANDIDATES_SHARE) * 90.0
    run = Run(model=None, example_inputs=(), analysis=None)
    assert share / 3 - 1 < run.budget(p, after=2) <= share / 3  # regions, then eager and compiled classes
    run.started -= 5.0  # regions used 5 s of their 15: the rest goes to the two stages after them
    assert (share - 5) / 2 - 1 < run.budget(p, after=1) <= (share - 5) / 2
    assert run.budget(Planner(total_s=90.0, budget_s=4.0), after=1) == 4.0  # the per-stage cap still holds


def test_a_host_bound_model_tries_cuda_graphs_first():
    from fxfusion.planning.search import host_bound

    plan = typical_plan("resnet_basic")
    ops = sum(1 for g in plan.captured.graphs for n in g.graph.nodes if n.op == "call_function")
    assert host_bound(plan, eager_ms=ops * 0.008) is True  # 8 us an op: all host
    assert host_bound(plan, eager_ms=ops * 0.020) is True  # 20 us an op, 8 of them the count's: Qwen2's decode step
    assert host_bound(plan, eager_ms=ops * 0.1) is False and host_bound(plan, None) is None
    from fxfusion.planning.search import Search

    said = Search(host_bound=True, ops=329, eager_ms=5.5).host_line()  # Qwen2's decode step on an H100
    assert said.startswith("host-bound: yes -- 329 ops x 8 us = 2.632 ms, 48% of an eager pass of 5.500 ms")
    assert Search().host_line() is None
    words = ("default", "freezing", "cudagraphs", "freezing+cudagraphs")
    assert config_order(words, True) == ["default", "freezing+cudagraphs", "cudagraphs", "freezing"]
    assert config_order(words, False) == list(words) == config_order(words, None)


def _timing(name: str, ms: float) -> Timing:
    return Timing(name, "ok", median_ms=ms, samples_ms=[ms * (1 + 0.001 * i) for i in range(10)])


def test_the_choice_is_never_slower_than_the_best_whole_model_configuration():
    times = {"eager": 5.0, "compile": 2.0, "compile+freezing": 1.6, "planned": 3.0, "planned+compile": 1.9}
    c = choose({n: _timing(n, ms) for n, ms in times.items()}, {n: True for n in times}, {})
    assert c.best_baseline == "compile+freezing" and c.chosen == "compile+freezing"
    assert "nothing the plan made beats it" in c.why
    times["planned+compile+freezing"] = 1.2
    c = choose({n: _timing(n, ms) for n, ms in times.items()}, {n: True for n in times}, {})
    assert c.chosen == "planned+compile+freezing" and "of compile+freezing, the fastest of eager" in c.why


def test_the_explanation_walks_from_eager_to_the_chosen_candidate_a_step_a_line():
    times = {"eager": 5.0, "compile": 2.0, "compile+freezing": 1.6, "planned+compile+freezing": 1.2}
    c = choose({n: _timing(n, ms) for n, ms in times.items()}, {n: True for n in times}, {})
    lines = explain(c, typical_plan("resnet_basic"))
    assert lines[0].startswith("torch.compile: 2.50x (5.0000 -> 2.0000 ms")
    assert lines[1].startswith("Inductor freezing: 1.25x") and lines[2].startswith("the plan's rewrites: 1.33x")
    assert any("conv2d_bn" in line and "not measured in this context" in line for line in lines[3:])


@pytest.mark.slow
def test_the_freezing_candidate_is_measured_verified_and_handed_back():
    """A real Inductor compile with freezing on the CPU: measured beside the default configuration, checked against
    float64, and what fxfusion.apply hands back for it computes the same outputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16)).eval()
    x = torch.randn(8, 32)
    plan = typical_plan_of_mlp(model, x)
    r = verify_plan(model, (x,), plan, spec=TINY_SPEC, clock=OpCountClock(),
                    candidates=CandidateSet(configs=("default", "freezing"), optional=()))
    rows = {row["name"]: row for row in r.candidates["candidates"]}
    assert rows["compile+freezing"]["verified"] and rows["compile+freezing"]["median_ms"] > 0
    assert "freezing" in rows["compile+freezing"]["config"]
    handed = apply(model, plan, candidate="compile+freezing")
    with torch.no_grad():
        assert torch.allclose(handed(x), model(x), atol=1e-5)
    assert handed.fxfusion_candidate == "compile+freezing"


def typical_plan_of_mlp(model, x):
    from tests.helpers import typical_plan_of

    return typical_plan_of(model, (x,))


def test_the_ranking_keeps_the_simplest_configuration_within_min_effect_of_the_fastest(monkeypatch):
    from types import SimpleNamespace

    from fxfusion.planning import search

    def ranked(ms: dict[str, float]) -> str:
        found = search.Search(built={n: Built(n, lambda: None, setup_s=0.0) for n in ms},
                              verified=dict.fromkeys(ms, True))
        monkeypatch.setattr(search, "measure", lambda ready, clock, spec: SimpleNamespace(
            seconds={n: [ms[n] * 1e-3 * f for f in (0.999, 1.0, 1.001)] for n in ready}))
        search._rank(found, ("default", "freezing", "cudagraphs", "freezing+cudagraphs"), (), None)
        return found.best_config

    # Qwen2 on an H100 (2026-12-07): freezing+cudagraphs 0.7589 ms, cudagraphs 0.7592 ms -- noise; cudagraphs kept
    assert ranked({"compile": 2.0082, "compile+freezing": 2.164, "compile+cudagraphs": 0.7592,
                   "compile+freezing+cudagraphs": 0.7589}) == "cudagraphs"
    assert ranked({"compile": 1.0, "compile+freezing": 0.99}) == "default"  # within 2%: the default
    assert ranked({"compile": 1.0, "compile+freezing": 0.9}) == "freezing"  # beyond it: the faster one


def test_the_candidates_run_takes_what_is_left_of_the_apply_budget(monkeypatch):
    from fxfusion.planning import verify

    seen = []
    real = verify._time
    monkeypatch.setattr(verify, "_time", lambda thunks, timings, clock, spec, seed, said: (
        seen.append(spec.budget_s), real(thunks, timings, clock, spec, seed, said))[1])
    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    args = dict(device="cpu", spec=TINY_SPEC, clock=OpCountClock(), candidates=CandidateSet.uncompiled())
    verify.verify_plan(loaded.model, loaded.example_inputs, plan, deadline=time.perf_counter() - 1, **args)
    verify.verify_plan(loaded.model, loaded.example_inputs, plan, deadline=None, **args)
    assert seen == [verify.TIMING_FLOOR_S, TINY_SPEC.budget_s]  # spent: its floor; no budget: its own


def test_the_planned_candidate_leaves_out_a_class_measured_slower_run_eagerly_but_every_group_is_verified():
    from fxfusion.planning import verify
    from fxfusion.planning.prediction import Context
    from tests.helpers import class_timing

    loaded = load_model(MODELS / "resnet_basic.py")
    args = dict(device="cpu", spec=TINY_SPEC, clock=OpCountClock(), candidates=CandidateSet.uncompiled())
    plan = typical_plan("resnet_basic")
    assert len(plan.groups) >= 2
    slow, kept = plan.groups[0], plan.groups[1:]
    slow.classes[Context.EAGER] = class_timing([slow], -1.0)  # its interval below zero: slower beyond the noise
    for g in kept:
        g.classes[Context.EAGER] = class_timing([g], 0.5, ci_low_ms=-0.1)  # within the noise: kept
    assert [g.id for g in plan.groups_for(Context.EAGER)] == [g.id for g in kept]
    v = verify.verify_plan(loaded.model, loaded.example_inputs, plan, **args)
    assert v.ok and all(r["applied"] for r in v.rewrites) and len(v.rewrites) == len(plan.groups)
    assert any(w.startswith(f"planned leaves out {slow.id}:") for w in v.warnings)
    assert v.timings["planned"].status == "ok"
    for g in kept:  # every class slower: no planned candidate at all, and the reason says why
        g.classes[Context.EAGER] = class_timing([g], -1.0)
    v = verify.verify_plan(loaded.model, loaded.example_inputs, plan, **args)
    assert v.ok and v.timings["planned"].status == "skipped"
    assert v.timings["planned"].reason == verify.EVERY_CLASS_SLOWER and verify.EVERY_CLASS_SLOWER in v.reason


def test_each_configuration_gives_torch_compile_its_own_options(monkeypatch):
    # Dynamo reuses a frame compiled by an equal backend: freezing as a patched config alone compared equal to the
    # default, and a copy compiled with freezing ran the default's code; its options must reach torch.compile
    seen = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: seen.append(kw) or module)
    for word in ("default", "freezing", "cudagraphs", "freezing+cudagraphs"):
        CONFIGS[word].compile(nn.Linear(2, 2))
    assert seen[0] == {"mode": None, "dynamic": False}
    assert seen[1] == {"options": {"freezing": True}, "dynamic": False}
    assert seen[2] == {"mode": "reduce-overhead", "dynamic": False}
    assert seen[3] == {"options": {"triton.cudagraphs": True, "freezing": True}, "dynamic": False}


@pytest.mark.slow
def test_a_copy_compiled_with_freezing_after_the_default_compiles_a_graph_of_its_own():
    from torch._dynamo.utils import counters

    from fxfusion.planning.candidates import compile_model, reset_compiled_state

    reset_compiled_state()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(2, 16)
    graphs = []
    for word in ("default", "freezing"):
        built = compile_model(word, copy.deepcopy(model), (x,), "cpu", CONFIGS[word])
        assert built.status == "ok"
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] == graphs[0] + 1  # before the fix: equal (the default's frame reused, nothing frozen)


def test_each_stage_says_its_seconds_in_order_and_on_the_verification(caplog):
    import logging

    from fxfusion.planning.pipeline import Planner, Run, run_stages

    class Analysis:
        verification = None

    def measure(run, p):
        run.started -= 2.0  # two seconds pass (the clock read after the stage is what counts)

    def verify(run, p):
        run.analysis.verification = {"ok": True}

    run = Run(model=None, example_inputs=(), analysis=Analysis())
    with caplog.at_level(logging.INFO, logger="fxfusion.planning"):
        run_stages(run, Planner(), (measure, verify))
    assert list(run.stage_s) == ["measure", "verify"]
    assert run.analysis.verification["stages_s"] == {k: round(v, 2) for k, v in run.stage_s.items()}
    assert "--apply: measure, " in caplog.text and "s so far)" in caplog.text
    assert Run(model=None, example_inputs=(), analysis=Analysis()).stage_s == {}


def test_a_build_that_would_end_past_the_deadline_is_not_started(monkeypatch):
    from types import SimpleNamespace

    from fxfusion.planning import search

    now = [100.0]  # a fake clock: each build takes 8 s of it
    monkeypatch.setattr(search, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    log: list = []

    def slow(name, module, inputs, device, config, record_post_grad=False):
        now[0] += 8.0
        return _fake_compile(log)(name, module, inputs, device, config)

    loaded = load_model(MODELS / "resnet_basic.py")
    plan = typical_plan("resnet_basic")
    found = build_candidates(loaded.model, loaded.example_inputs, plan, apply(loaded.model, plan),
                             {g.id for g in plan.groups}, CandidateSet(configs=("default", "freezing")), "cpu",
                             lambda out: "", OpCountClock(), [], compile_fn=slow, deadline=112.0)
    assert [name for name, _ in log] == ["compile"]  # 4 s left after it, the longest build 8 s: nothing else starts
    assert found.not_tried["compile+freezing"] == ("the --apply budget would be spent before it was built (4 s left, "
                                                   "the longest build so far took 8 s)")
    # a compile of the model seen before the search (the compiled contexts') is the estimate from the first build on
    log.clear()
    now[0] = 100.0
    found = build_candidates(loaded.model, loaded.example_inputs, plan, apply(loaded.model, plan),
                             {g.id for g in plan.groups}, CandidateSet(configs=("default", "freezing")), "cpu",
                             lambda out: "", OpCountClock(), [], compile_fn=slow, deadline=130.0, longest_build_s=25.0)
    assert [name for name, _ in log] == ["compile"]  # 22 s left after it, less than the 25 s seen: not started
    assert "the longest build so far took 25 s" in found.not_tried["compile+freezing"]


def test_the_apply_lines_reach_the_cli_note_only_while_told():
    import logging

    from fxfusion.reports.progress import told

    log, lines, root = logging.getLogger("fxfusion.planning"), [], []
    level, handlers = log.level, list(log.handlers)

    class Root(logging.Handler):  # a calling program's root logger at INFO
        def emit(self, record):
            root.append(record.getMessage())

    on_root = Root(logging.INFO)
    logging.getLogger().addHandler(on_root)
    try:
        with told(lines.append):
            log.info("--apply: %s, %.1f s", "regions timed in the model", 2.0)
        log.info("after: not told")
    finally:
        logging.getLogger().removeHandler(on_root)
    assert lines == ["--apply: regions timed in the model, 2.0 s"] and "--apply" not in " ".join(root)
    assert log.level == level and log.handlers == handlers and log.propagate
