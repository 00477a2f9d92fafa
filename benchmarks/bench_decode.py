"""Decoding with a KV cache: ms per generated token of each candidate inside the real generation loop.

Per causal LM of the zoo (``hf_llama``, ``hf_qwen2``, ``hf_gpt2`` by default; ``hf_gpt2_sdpa`` on request), its
``decode_cache`` step (``hf_llama.DecodeStep``: one token per sequence over transformers' StaticCache, the cache's
tensors as inputs, written in place) at the realistic preset (8 sequences, a 128-token prompt) or a tiny one (2
sequences, an 8-token prompt):
  1. the candidate fxfusion chooses: the step analysed and applied as ``fxfusion analyze --apply`` runs it
     (``planning.analyze.analyze`` with this machine's profile or live timings, then ``pipeline.apply_and_verify``
     and ``fxfusion.apply``), or with ``--plans DIR`` a plan saved by ``--save-plans DIR`` applied without timing
     (``fxfusion.apply(step, fxfusion.load_plan(...))``);
  2. the candidates, each with a cache of its own, allocated once as a server would and marked a static address as
     transformers' StaticCache marks its own (CUDA graphs replay in place over it): eager (the step as it is),
     whole-model ``torch.compile`` of the step in each configuration (``planning.configs``: default, freezing, CUDA
     graphs and both on CUDA; default and freezing on a CPU), each copy of the step called from a frame of its own
     (:func:`own_frame`), and the chosen one -- Dynamo's state reset first and the chosen one compiled first, so no
     compile takes another's cache entry;
  3. one untimed generation each (the compiles happen there: its wall time is the setup), then ``--rounds``
     interleaved rounds (the candidates' order rotated every round): the prompt prefilled eagerly into the
     candidate's cache (untimed, the same for all), then ``--steps`` greedy steps timed as one block, synchronised at
     both ends: ms per token = block / steps.  The loop is ``hf_llama.greedy_generate``'s, on a persistent cache,
     with the steps' positions made on the device before the clock starts (no host-device copy inside the loop);
     CUDA-graph candidates call ``torch.compiler.cudagraph_mark_step_begin()`` before each step, as transformers'
     generate does, and the next token is taken from the logits before the next call (a CUDA graph overwrites its
     outputs then: the step-1 logits compared below are a clone);
  4. every generation's greedy tokens (the prefill's token and ``--steps`` more) compared with eager's: equal, or the
     first step where they differ, with eager's gap between its two largest logits there (a near-tie where that gap
     is within the largest difference the candidate makes to the first decode step's logits: any two kernel choices
     may then pick either token, torch.compile's own included); the first decode step's logits against eager's.
Prints, per model, a markdown row per candidate: the median ms per token with its 95% bootstrap interval, paired
per-round speedups over eager and over the best whole-model configuration, the tokens' check and the setup seconds;
then whether the chosen candidate is no slower than the best whole-model configuration (the issue's target).  The log
(markdown) and every raw sample (JSON) go to ``--out``.  Write down the machine's load with the result.

    python3 benchmarks/bench_decode.py --out /tmp/decode                                  # tiny, this CPU
    python3 benchmarks/bench_decode.py --device cuda --dtype bfloat16 --preset realistic --out DIR
    python3 benchmarks/bench_decode.py ... --save-plans DIR/plans; python3 benchmarks/bench_decode.py ... --plans DIR/plans
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch._dynamo.utils import counters

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "models" / "zoo")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fxfusion.calibration.variants import compile_limits  # noqa: E402
from fxfusion.measure.devices import as_device, is_cuda  # noqa: E402
from fxfusion.measure.devices import dtype as dtype_record  # noqa: E402
from fxfusion.measure.stats import median_interval, paired_speedup  # noqa: E402
from fxfusion.planning.analyze import analyze  # noqa: E402
from fxfusion.planning.apply import apply  # noqa: E402
from fxfusion.planning.candidates import CandidateSet, parse_candidates  # noqa: E402
from fxfusion.planning.configs import CONFIGS, Compiled, Spec, parse_configs  # noqa: E402
from fxfusion.planning.decide import LiveSource, ProfileSource  # noqa: E402
from fxfusion.planning.pipeline import Planner, apply_and_verify, default_budget_s  # noqa: E402
from fxfusion.planning.rewrite import copy_model  # noqa: E402
from fxfusion.planning.saved import apply as apply_saved  # noqa: E402
from fxfusion.planning.saved import load_plan, save_plan  # noqa: E402
from fxfusion.profiles.machine import find_machine_profile  # noqa: E402

MODELS = ("hf_llama", "hf_qwen2", "hf_gpt2")
MIN_STEPS = 32  # the target: eager's greedy tokens over at least this many steps
TINY_PROMPT = 8
DECODE_CACHE_OF = {"hf_gpt2_sdpa": "hf_gpt2"}  # whose decode_cache(cfg) builds the file's presets


@dataclass
class Candidate:
    name: str
    module: torch.nn.Module
    cudagraphs: bool = False  # mark a new step before each call (torch.compiler.cudagraph_mark_step_begin)
    kv: list[torch.Tensor] = field(default_factory=list)  # its own cache, allocated once
    samples_ms: list[float] = field(default_factory=list)  # ms per token, one per round
    setup_s: float | None = None  # the first (untimed) generation: compiles included
    graphs: int = 0  # graphs Dynamo compiled during it (0 for a compiled candidate: it ran another's code)
    tokens_equal: bool = True
    first_difference: str | None = None  # where its tokens first differed from eager's
    logits_error: float | None = None  # step 1's logits against eager's, largest relative difference
    logits_diff: float | None = None  # the same, largest absolute difference
    failed: str | None = None


# -- the model and its generation loop ---------------------------------------------------------------------------------

def build(name: str, preset: str, steps: int, device: torch.device, dtype: torch.dtype | None):
    """(module, cfg, step, example inputs, prompt): the file's decode_cache step on ``device`` in ``dtype``, its cache
    long enough for ``steps`` tokens after the prompt, and its example inputs prefilled from the prompt."""
    module = __import__(name)
    base = module.PRESETS["decode_cache"] if preset == "realistic" else replace(module.PRESETS["tiny"], seq=TINY_PROMPT)
    cfg = replace(base, cache=max(base.cache, base.seq + steps + 1))
    if cfg.cache > cfg.positions:
        raise SystemExit(f"{name}: {cfg.seq} prompt tokens + {steps} steps exceed its {cfg.positions} positions")
    step, _ = __import__(DECODE_CACHE_OF.get(name, name)).decode_cache(cfg)
    step = step.to(device=device, dtype=dtype) if dtype is not None else step.to(device=device)
    llama = __import__("hf_llama")
    prompt = __import__("_zoolib").token_ids(cfg.batch, cfg.seq, cfg.vocab, seed=7).to(device)
    token, kv = llama.prefill(step, prompt)
    return module, cfg, step, (token, torch.tensor(cfg.seq, device=device), *kv), prompt


def sync(device: torch.device) -> None:
    if is_cuda(device):
        torch.cuda.synchronize(device)


def generate(c: Candidate, step, prompt: torch.Tensor, steps: int, device: torch.device, gaps: list | None = None):
    """The prompt prefilled eagerly into ``c``'s cache (untimed), then ``steps`` greedy calls of ``c.module``:
    (tokens (B, 1 + steps), ms per token, step 1's logits cloned).  ``gaps``, given a list (the untimed reference
    generation only: it adds work to the loop), gets each step's gap between the two largest logits per sequence."""
    with torch.no_grad():
        for t in c.kv:
            t.zero_()
        logits = step(prompt, torch.tensor(0, device=device), *c.kv)
        token, tokens, first = logits[:, -1:].argmax(-1), [], None
        tokens.append(token)
        if gaps is not None:
            gaps.append(top2_gap(logits))
        # The positions made before the clock starts, on the device as transformers' generate keeps cache_position:
        # a host-to-device copy per step would make the host wait for the GPU at every step.
        positions = [torch.tensor(prompt.shape[1] + i, device=device) for i in range(steps)]
        sync(device)
        start = time.perf_counter()
        for position in positions:
            if c.cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            logits = c.module(token, position, *c.kv)
            if first is None:
                first = logits.detach().clone()  # a CUDA graph's output is overwritten by its next replay
            token = logits[:, -1:].argmax(-1)  # a new tensor, taken before the next call
            tokens.append(token)
            if gaps is not None:
                gaps.append(top2_gap(logits))
        sync(device)
        ms = (time.perf_counter() - start) * 1e3 / steps
    return torch.cat(tokens, dim=1), ms, first


def top2_gap(logits: torch.Tensor) -> torch.Tensor:
    """Per sequence, the last position's largest logit less its second largest: how near greedy decoding was to a tie."""
    top = logits[:, -1].float().topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def first_difference(got: torch.Tensor, want: torch.Tensor, gaps: torch.Tensor | None = None,
                     logits_diff: float | None = None) -> str | None:
    """Where ``got``'s tokens first differ from ``want``'s; with eager's ``gaps`` (B, steps) and the largest absolute
    difference of step 1's logits from eager's, whether that step was a near-tie: eager's top-two gap there within
    the difference the two computations make to a logit."""
    if got.shape == want.shape and torch.equal(got, want):
        return None
    if got.shape != want.shape:
        return f"shape {tuple(got.shape)} against {tuple(want.shape)}"
    rows, cols = torch.nonzero(got != want, as_tuple=True)
    col = int(cols.min())
    row = int(rows[cols == col][0])
    text = f"from step {col} (sequence {row}"
    if gaps is not None:
        gap = float(gaps[row, col])
        text += f"; eager's top-two logit gap there {gap:.2g}"
        if logits_diff is not None:
            text += (f", within the {logits_diff:.2g} its step-1 logits differ by: a near-tie" if gap <= logits_diff
                     else f", over the {logits_diff:.2g} its step-1 logits differ by")
    return text + ")"


# -- the candidates ----------------------------------------------------------------------------------------------------

def _source(device: torch.device, measure: bool):
    """As ``analyze`` decides: this machine's profile in profiles/ (patterns it lacks measured live), or live."""
    live = LiveSource(device, compile_modes=())
    found = None if measure else find_machine_profile(ROOT / "profiles", device)
    return (live, "live measurement") if found is None else (
        ProfileSource(found.profile, device, str(found.path), live=live), str(found.path))


def chosen_module(name: str, step, inputs: tuple, args, device: torch.device, configs: tuple[str, ...]):
    """The candidate fxfusion hands back for the step, and what was done to get it (module doc, 1)."""
    info: dict = {}
    start = time.perf_counter()
    if args.plans:
        path = Path(args.plans) / f"{name}.json"
        saved = load_plan(path)
        module = apply_saved(step, saved, example_inputs=inputs)
        info.update(how=f"saved plan {path}", apply_s=time.perf_counter() - start, groups=len(saved.groups))
    else:
        source, said = _source(device, args.measure)
        result = analyze(step, inputs, source, device=device, model_label=f"{name}:decode_cache", dtype=args.dtype,
                         command="benchmarks/bench_decode.py")
        candidates = CandidateSet(configs=configs, optional=parse_candidates(args.candidates))
        planner = Planner(device, candidates=candidates, total_s=default_budget_s(device))
        plan, verification = apply_and_verify(result, step, inputs, planner)
        module = apply(step, plan)
        info.update(how=f"analyze --apply (sites from {said})", apply_s=time.perf_counter() - start,
                    groups=len(plan.groups), verified=verification.ok, why=(plan.choice or {}).get("why"),
                    measured_ms={r["name"]: r.get("median_ms") for r in (plan.choice or {}).get("candidates", [])})
        if args.save_plans and verification.ok:
            Path(args.save_plans).mkdir(parents=True, exist_ok=True)
            info["saved"] = str(save_plan(plan, Path(args.save_plans) / f"{name}.json", step, inputs))
    chosen = getattr(module, "fxfusion_candidate", "planned")
    info.update(chosen=chosen, applied=sum(r.applied for r in getattr(module, "fxfusion_rewrites", [])))
    spec = Spec.parse(chosen)
    return Candidate(f"chosen: {chosen}", module, cudagraphs=bool(spec.config and spec.config.cudagraphs)), info


def own_frame(inner: torch.nn.Module) -> torch.nn.Module:
    """``inner`` called from a forward of its own: a code object no other candidate has.

    Dynamo keeps compiled code per code object, and two ``torch.compile`` of copies of one module class in
    configurations that differ only by Inductor options (default and freezing; CUDA graphs and freezing + CUDA
    graphs) share one entry: the second reuses the first's compiled graph, and is never frozen (measured here,
    2026-12-07: ``compile+freezing`` after ``compile`` of the tiny Llama step compiled no frame, 0.001 s).  A fresh
    code object (and class) per candidate keeps each configuration's compile its own; Dynamo inlines it away."""
    namespace: dict = {}
    exec("def forward(self, *args):\n    return self.inner(*args)\n", namespace)  # a new code object
    wrapper = type("OwnFrame", (torch.nn.Module,), {"forward": namespace["forward"]})()
    wrapper.inner = inner
    return wrapper


def candidates_for(step, configs: tuple[str, ...], chosen: Candidate, cache) -> list[Candidate]:
    """Eager, each whole-model configuration (a copy of the step in a frame of its own), and the chosen one."""
    out = [Candidate("eager", step)]
    for word in configs:
        config = CONFIGS[word]
        out.append(Candidate(Spec(config=config).name, Compiled(own_frame(copy_model(step)), config),
                             config.cudagraphs))
    out.append(chosen)
    for c in out:
        c.kv = cache()
        for t in c.kv:  # as transformers' StaticCache marks its tensors: without it CUDA graphs skip a mutated input
            torch._dynamo.mark_static_address(t)
    return out


# -- rounds and the report ---------------------------------------------------------------------------------------------

def run_model(name: str, args, device: torch.device, dtype) -> dict:
    module, cfg, step, inputs, prompt = build(name, args.preset, args.steps, device, dtype)
    configs = tuple(w for w in parse_configs(args.compile_modes, is_cuda(device))
                    if is_cuda(device) or not CONFIGS[w].cuda_only)
    chosen, info = chosen_module(name, step, inputs, args, device, configs)
    torch._dynamo.reset()  # the analysis compiled the step: no compile below may find Dynamo's cache full
    llama = __import__("hf_llama")
    cands = candidates_for(step, configs, chosen, lambda: llama.empty_cache(step.lm, cfg.batch, step.cache_len))
    eager = cands[0]
    with compile_limits():
        gaps: list[torch.Tensor] = []
        want, _, want_logits = generate(eager, step, prompt, args.steps, device, gaps)
        gaps_t = torch.stack(gaps, dim=1).cpu()
        for c in [chosen] + cands[:-1]:  # the chosen one first: fxfusion.apply's compile sees a fresh Dynamo
            start, graphs = time.perf_counter(), counters["stats"]["unique_graphs"]
            try:
                got, _, logits = generate(c, step, prompt, args.steps, device)
            except Exception as exc:  # a candidate that fails is a result, not a crash of the benchmark
                c.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                continue
            c.setup_s, c.graphs = time.perf_counter() - start, counters["stats"]["unique_graphs"] - graphs
            diff = float((logits.float() - want_logits.float()).abs().max())
            c.logits_error = diff / float(want_logits.float().abs().max().clamp_min(1e-30))
            c.logits_diff = diff
            c.first_difference = first_difference(got, want, gaps_t, diff)
            c.tokens_equal = c.first_difference is None
        live = [c for c in cands if c.failed is None]
        for r in range(args.rounds):
            for c in live[r % len(live):] + live[:r % len(live)]:
                got, ms, _ = generate(c, step, prompt, args.steps, device)
                c.samples_ms.append(ms)
                if c.tokens_equal and (diff := first_difference(got, want, gaps_t, c.logits_diff)) is not None:
                    c.tokens_equal, c.first_difference = False, f"round {r}: {diff}"
    return {"model": name, "preset": args.preset, "batch": cfg.batch, "prompt": cfg.seq, "cache": cfg.cache,
            "steps": args.steps, "fxfusion": info, "candidates": [_row(c, eager, cands) for c in cands]}


def _best_whole(cands: list[Candidate]) -> Candidate | None:
    whole = [c for c in cands if c.samples_ms and c.name.startswith("compile")]
    return min(whole, key=lambda c: median_interval(c.samples_ms).median) if whole else None


def _row(c: Candidate, eager: Candidate, cands: list[Candidate]) -> dict:
    best = _best_whole(cands)
    row = {"name": c.name, "failed": c.failed, "setup_s": c.setup_s, "graphs": c.graphs, "tokens_equal": c.tokens_equal and not c.failed,
           "first_difference": c.first_difference, "logits_error": c.logits_error, "samples_ms": c.samples_ms,
           "ms_per_token": None, "over_eager": None, "over_best_compile": None,
           "best_compile": best.name if best else None}
    if c.samples_ms:
        row["ms_per_token"] = median_interval(c.samples_ms).__dict__
        row["over_eager"] = paired_speedup(eager.samples_ms, c.samples_ms).__dict__
        if best is not None:
            row["over_best_compile"] = paired_speedup(best.samples_ms, c.samples_ms).__dict__
    return row


def _ci(d: dict | None, fmt: str, unit: str = "") -> str:
    return "-" if d is None else f"{d['median']:{fmt}}{unit} [{d['ci_low']:{fmt}}, {d['ci_high']:{fmt}}]"


def table(result: dict, steps: int) -> list[str]:
    info = result["fxfusion"]
    lines = [f"\n## {result['model']} decode_cache ({result['preset']}: {result['batch']} sequences, "
             f"{result['prompt']}-token prompt, cache {result['cache']}, {steps} steps)\n",
             f"fxfusion: {info['how']}, {info['groups']} groups, {info['applied']} applied, chosen "
             f"{info['chosen']}, in {info['apply_s']:.1f} s" + (f"; {info['why']}" if info.get("why") else ""), "",
             "| candidate | ms per token [95% CI] | over eager (paired) | over best whole-model compile (paired) | "
             f"tokens = eager's ({steps} steps) | step-1 logits rel. diff | setup s (first generation) | graphs compiled |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["candidates"]:
        if r["failed"]:
            lines.append(f"| {r['name']} | failed: {r['failed']} | - | - | - | - | - | - |")
            continue
        tokens = "equal" if r["tokens_equal"] else f"DIFFER {r['first_difference']}"
        lines.append(f"| {r['name']} | {_ci(r['ms_per_token'], '.4g')} | {_ci(r['over_eager'], '.3f', 'x')} | "
                     f"{_ci(r['over_best_compile'], '.3f', 'x')} | {tokens} | {r['logits_error']:.1e} | "
                     f"{r['setup_s']:.1f} | {r['graphs']} |")
    chosen = result["candidates"][-1]
    best, over = chosen.get("best_compile"), chosen.get("over_best_compile")
    if over is None:
        verdict = "not measured (no whole-model configuration or the chosen one failed)"
    else:
        verdict = ("met" if over["median"] >= 1.0 else "met within noise" if over["ci_high"] >= 1.0 else "MISSED")
        verdict += f": {_ci(over, '.3f', 'x')} of {best}"
    lines.append(f"\nchosen candidate no slower than the best whole-model compile configuration: {verdict}; "
                 f"tokens equal eager's: {'yes' if all(r['tokens_equal'] for r in result['candidates']) else 'NO'}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=list(MODELS), help=f"zoo files' stems (default: {' '.join(MODELS)})")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="e.g. bfloat16 (default: the model's float32)")
    ap.add_argument("--preset", default="tiny", choices=("tiny", "realistic"))
    ap.add_argument("--steps", type=int, default=MIN_STEPS, help=f"greedy steps per generation (>= {MIN_STEPS})")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timed generations per candidate")
    ap.add_argument("--out", default="/tmp/fxfusion-decode")
    ap.add_argument("--compile-modes", default="auto", help="whole-model configurations (planning.configs; auto: "
                    "default, freezing, cudagraphs, freezing+cudagraphs on CUDA; default, freezing on a CPU)")
    ap.add_argument("--candidates", default="all", help="analyze --apply's optional candidates: all, none or a list")
    ap.add_argument("--measure", action="store_true", help="measure every site live (default: this machine's profile)")
    ap.add_argument("--plans", default=None, help="apply DIR/<model>.json saved plans instead of analysing")
    ap.add_argument("--save-plans", default=None, help="save each verified plan to DIR/<model>.json")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--progress", action="store_true", help="log each --apply stage and candidate build to stderr")
    args = ap.parse_args()
    if args.progress:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
        logging.getLogger("fxfusion.planning").setLevel(logging.INFO)
    if args.steps < MIN_STEPS:
        ap.error(f"--steps must be at least {MIN_STEPS}: the tokens are checked over that many")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = as_device(args.device)
    dtype = dtype_record(args.dtype).torch if args.dtype else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if is_cuda(device) else "cpu"
    head = (f"# bench_decode: torch {torch.__version__}, {device} ({name}), dtype {args.dtype or 'float32'}, preset "
            f"{args.preset}, {args.steps} steps, {args.rounds} rounds, threads {torch.get_num_threads()}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(head, flush=True)
    log, results = [head], []
    for model in args.models:
        start = time.perf_counter()
        result = run_model(model, args, device, dtype)
        result["wall_s"] = time.perf_counter() - start
        results.append(result)
        lines = table(result, args.steps) + [f"({model}: {result['wall_s']:.0f} s in all)"]
        print("\n".join(lines), flush=True)
        log += lines
        (out / "bench_decode.json").write_text(json.dumps({"header": head, "args": vars(args), "models": results},
                                                          indent=1))
        (out / "bench_decode.md").write_text("\n".join(log) + "\n")  # after each model: a run cut short keeps them
    tail = f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    print(tail)
    (out / "bench_decode.md").write_text("\n".join(log + [tail]) + "\n")


if __name__ == "__main__":
    main()
