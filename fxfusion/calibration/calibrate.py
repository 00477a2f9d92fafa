"""Calibration: measure every (pattern, shape, dtype) of the library on one device and decide each.

For one problem (:func:`measure_entry`):
  1. make the inputs from a seeded generator and the float64 reference (eager, run in float64 on the CPU);
  2. build the variants (:mod:`fxfusion.calibration.variants`); check each output against the reference (the correctness gate);
  3. count what each variant launches; a manual variant that launches as many kernels as eager is no fusion and
     is refused (``not_a_fusion``);
  4. time eager and the remaining variants interleaved, in both regimes at once -- isolated and pipelined -- and
     again while a verdict is unstable (:mod:`fxfusion.calibration.regimes`, :mod:`fxfusion.measure.noise`); keep the
     raw samples;
  5. per regime, speedup over eager with a bootstrap interval for each; the decision takes the best correct variant
     and a verdict from its interval (:mod:`fxfusion.measure.stats`), ``neutral`` and ``noisy`` when it stayed
     unstable.
"""

from __future__ import annotations

import inspect
import platform
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import torch

from fxfusion import __version__
from fxfusion.measure.ceilings import CEILING_SPEC, measure_ceilings, slow_dtypes
from fxfusion.measure.correctness import relative_error, to_reference, tolerance
from fxfusion.errors import FxFusionError
from fxfusion.measure.hardware import HardwareSpec, device_name, mismatch_warning, resolve
from fxfusion.measure.kernelcount import count_launches, sdpa_backend
from fxfusion.measure.profiling import cupti_warning
from fxfusion.measure.threads import set_threads
from fxfusion.fusions.registry import Pattern, select_patterns
from fxfusion.profiles.profile import Decision, Entry, Profile, Timing, VariantResult, entry_key
from fxfusion.calibration.journal import append, count_entries, open_journal, progress_path
from fxfusion.profiles.schema import check_writable
from fxfusion.measure.noise import NoiseGuard, entry_speedup
from fxfusion.measure.stats import CONFIDENCE, MIN_EFFECT, summarize
from fxfusion.measure.timing import (FULL_SPEC, ISOLATED, PIPELINED, QUICK_SPEC, REGIMES, Clock, Thunk, TimingSpec,
                                     clock_for)
from fxfusion.calibration.regimes import Timed, decide, noise_summary, noise_warnings, settle, time_variants
from fxfusion.calibration.variants import Built, build_variants, one_line
from fxfusion.measure.devices import as_device, check_available, is_cuda
from fxfusion.measure.devices import dtype as dtype_record
from fxfusion.measure.devices import DTYPES



def parse_dtypes(spec: str | Iterable[str]) -> list[str]:
    words = [w.strip() for w in (spec.split(",") if isinstance(spec, str) else spec) if w.strip()]
    unknown = [w for w in words if w not in DTYPES]
    if unknown or not words:
        raise FxFusionError(f"unknown dtype {', '.join(unknown) or '(none given)'}; choose from {', '.join(DTYPES)}")
    return words


def check_device(device: str | torch.device) -> torch.device:
    """The one ``torch.device`` a calibration or analysis carries down to its clock (``cuda`` resolved to an index)."""
    return check_available(device)


def tf32_state() -> dict[str, bool]:
    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn": bool(torch.backends.cudnn.allow_tf32)}


def _uses_tf32(pattern: Pattern, dtype: torch.dtype, device: str) -> bool:
    if dtype != torch.float32 or not is_cuda(device):
        return False
    state = tf32_state()
    return state["cudnn"] if pattern.family == "conv" else state["matmul"]


# Kernel names are stored cut to this length (CUDA template names run to thousands of characters); the not-a-fusion
# check compares whole names.
KERNEL_NAME_CHARS = 160
# The float64 reference runs on the CPU; above this working set it is computed on the leading rows only.
REFERENCE_MAX_BYTES = 1 << 30


def _check(built: Built, ref: torch.Tensor, tol: float) -> tuple[float | None, Built]:
    if built.status != "ok":
        return None, built
    try:
        out, rows = built.thunk(), (ref[0] if isinstance(ref, tuple) else ref).shape[0]
        err = relative_error(tuple(o[:rows] for o in out) if isinstance(out, tuple) else out[:rows], ref)
    except Exception as exc:
        built.status, built.reason, built.thunk = "failed", one_line(exc), None
        return None, built
    if not err <= tol:
        built.status, built.reason = "incorrect", f"relative error {err:.3g} exceeds the {tol:.0e} tolerance"
        built.thunk = None
    return err, built


def _not_a_fusion(b: Built, lc, eager) -> str | None:
    """A manual variant that launches more kernels than eager, or the same kernels, fuses nothing on this device
    (e.g. F.rms_norm on CPU decomposes into the very ops it replaces).  Fewer or different kernels pass: BN folding
    replaces the BN kernel with a bias add, which is real work removed even at an equal count."""
    if b.kind != "manual" or b.status != "ok" or lc is None or eager is None:
        return None
    more = lc.kernels_per_call > eager.kernels_per_call
    same = lc.kernels_per_call == eager.kernels_per_call and set(lc.names) == set(eager.names)
    if more or same:
        return (f"launches {lc.kernels_per_call:g} {lc.unit} per call ({', '.join(lc.names)[:160]}), eager "
                f"launches {eager.kernels_per_call:g}: not a fusion on this device")
    return None


def _decide(pattern: str, shape: dict, dtype: str, device: str, variants: list[VariantResult],
            regime: str = ISOLATED) -> Decision:
    """One regime's decision (:func:`fxfusion.calibration.regimes.decide`; the isolated one by default)."""
    return decide(pattern, shape, dtype, device, variants, regime)


def _roofline(pattern: Pattern, shape: dict, itemsize: int, dtype: str, hw: HardwareSpec, tf32: bool,
              ceilings: dict | None) -> dict:
    flops = pattern.flops(shape)
    peak_gflops, peak_gbs = hw.peak_for(dtype, tf32), hw.peak_bandwidth_gbs

    def predict(nbytes, gflops, gbs):
        return max(flops / (gflops * 1e9), nbytes / (gbs * 1e9)) * 1e3

    unfused, fused = pattern.bytes(shape, itemsize, False), pattern.bytes(shape, itemsize, True)
    out = {"unfused_ms": predict(unfused, peak_gflops, peak_gbs), "fused_ms": predict(fused, peak_gflops, peak_gbs),
           "bound": "compute" if flops / peak_gflops > fused / peak_gbs else "memory",
           "peak_gflops": peak_gflops, "peak_gbs": peak_gbs, "basis": f"datasheet peaks of {hw.name}",
           "measured_unfused_ms": None, "measured_fused_ms": None}
    if ceilings and ceilings.get("best_gbs") and ceilings["best_gflops"].get(dtype):
        g, b = ceilings["best_gflops"][dtype], ceilings["best_gbs"]
        out["measured_unfused_ms"], out["measured_fused_ms"] = predict(unfused, g, b), predict(fused, g, b)
    return out


def _timing(secs: list[float], inner: int, eager: list[float] | None, seed: int, statistic: str) -> Timing:
    """One regime's timing of a variant from its per-call seconds (and eager's, for a speedup by ``statistic``)."""
    summary = summarize(secs)
    t = Timing(samples_ms=[x * 1e3 for x in secs], calls_per_sample=inner, median_ms=summary.median * 1e3,
               iqr_ms=summary.iqr * 1e3, noisy=summary.noisy)
    if eager is not None:
        t.speedup = entry_speedup(eager, secs, statistic, seed)
        t.verdict = t.speedup.verdict()
    return t


def measure_entry(pattern: Pattern, shape: dict, dtype_name: str, device: str, hw: HardwareSpec,
                  spec: TimingSpec, clock: Clock, ceilings: dict | None = None, seed: int = 0,
                  compile_modes: tuple[str, ...] = ("compile", "compile_reduce_overhead"),
                  guard: NoiseGuard | None = None,
                  on_thunks: Callable[[str, dict[str, Thunk]], None] | None = None) -> Entry:
    """Measure one (pattern, shape, dtype) in both regimes and decide it.  ``guard`` watches for noise (default: the
    samples' own stability only, no host reads); ``on_thunks(key, thunks)`` sees the timed callables before they are
    released (benchmarks that time them another way)."""
    shape = pattern.check_shape(shape)
    dtype, itemsize = dtype_record(dtype_name).torch, dtype_record(dtype_name).itemsize
    device = as_device(device)
    gen = torch.Generator().manual_seed(seed)
    inputs = pattern.make_inputs(shape, dtype, device, gen)
    ref_inputs, ref_rows = pattern.reference_slice(shape, inputs, REFERENCE_MAX_BYTES)
    ref = pattern.eager(**to_reference(ref_inputs))
    del ref_inputs
    tf32 = _uses_tf32(pattern, dtype, device)
    tol = tolerance(dtype, tf32)
    built = build_variants(pattern, shape, dtype, device, inputs, compile_modes)
    errors = {b.name: _check(b, ref, tol)[0] for b in built}
    del ref

    launches = {}
    for b in built:
        if b.status == "ok":
            try:
                launches[b.name] = count_launches(b.thunk, device)
            except Exception as exc:  # the profiler is diagnostic; its failure must not lose the measurement
                b.details = {**(b.details or {}), "profiler_error": one_line(exc)}
    for b in built:
        why = _not_a_fusion(b, launches.get(b.name), launches.get("eager"))
        if why:
            b.status, b.thunk, b.reason = "not_a_fusion", None, why

    thunks = {b.name: b.thunk for b in built if b.status == "ok"}
    timed: Timed | None = time_variants(thunks, clock, spec, guard or NoiseGuard()) if "eager" in thunks else None
    if timed is not None and on_thunks is not None:
        on_thunks(entry_key(pattern.name, shape, dtype_name, device), thunks)
    if timed is None:  # without a correct eager baseline nothing is timed; say so on every variant that could run
        for b in built:
            if b.status == "ok":
                b.status, b.thunk = "failed", None
                b.reason = "not timed: the eager baseline did not pass the correctness gate"
    roofline = _roofline(pattern, shape, itemsize, dtype_name, hw, tf32, ceilings)
    flops = pattern.flops(shape)
    results = []
    for b in built:
        lc = launches.get(b.name)
        v = VariantResult(name=b.name, kind=b.kind, status=b.status, reason=b.reason, note=b.note,
                          compile_s=b.compile_s, rel_error=errors.get(b.name), tolerance=tol,
                          details=dict(b.details or {}))
        if ref_rows < shape[pattern.shape_keys[0]]:
            v.details["reference_rows"] = ref_rows
        if lc:
            v.kernels_per_call, v.kernel_unit = lc.kernels_per_call, lc.unit
            v.kernel_names = [n if len(n) <= KERNEL_NAME_CHARS else n[:KERNEL_NAME_CHARS] + "..." for n in lc.names]
            if lc.device_s_per_call is not None:
                v.device_ms = lc.device_s_per_call * 1e3
        if pattern.family == "attention" and b.name == "sdpa" and lc:
            v.details["sdpa_backend"] = sdpa_backend(lc.names)
        if timed and b.name in timed.samples.by_regime[ISOLATED].seconds:
            by = {r: timed.samples.by_regime[r] for r in REGIMES}
            eager_s = {r: by[r].seconds["eager"] if b.kind != "eager" else None for r in REGIMES}
            iso = _timing(by[ISOLATED].seconds[b.name], by[ISOLATED].inner[b.name], eager_s[ISOLATED], seed,
                          timed.statistic)
            v.samples_ms, v.calls_per_sample, v.median_ms, v.iqr_ms, v.noisy = \
                iso.samples_ms, iso.calls_per_sample, iso.median_ms, iso.iqr_ms, iso.noisy
            v.speedup, v.verdict = iso.speedup, iso.verdict
            v.pipelined = _timing(by[PIPELINED].seconds[b.name], by[PIPELINED].inner[b.name], eager_s[PIPELINED],
                                  seed, timed.statistic)
            if v.device_ms is not None:
                v.host_overhead_ms = max(0.0, v.median_ms - v.device_ms)
            nbytes = pattern.bytes(shape, itemsize, b.kind != "eager")
            v.gflops = flops / (v.median_ms / 1e3) / 1e9
            v.gbs = nbytes / (v.median_ms / 1e3) / 1e9
            ideal = roofline["unfused_ms"] if b.kind == "eager" else roofline["fused_ms"]
            v.pct_of_roofline = 100.0 * ideal / v.median_ms
        results.append(v)
    eager_v = results[0]
    for v in results[1:]:
        if v.device_ms and eager_v.device_ms:  # kernel time alone: what fusion saves once launches overlap
            v.details["device_speedup"] = eager_v.device_ms / v.device_ms
    decisions = {r: settle(decide(pattern.name, shape, dtype_name, device, results, r), timed, r) for r in REGIMES}
    return Entry(pattern=pattern.name, family=pattern.family, title=pattern.title, shape=shape, dtype=dtype_name,
                 device=str(device), flops=flops, bytes_unfused=pattern.bytes(shape, itemsize, False),
                 bytes_fused=pattern.bytes(shape, itemsize, True),
                 memory_reduction=pattern.memory_reduction(shape, itemsize), roofline=roofline,
                 variants=results, decision=decisions[ISOLATED], extra=pattern.extra(shape),
                 pipelined_decision=decisions[PIPELINED], noise=timed.noise_record() if timed else {})


def default_dtypes(device: str) -> list[str]:
    return ["float32", "bfloat16"] if is_cuda(device) else ["float32"]


def interrupted_message(output: Path | None) -> str:
    """What an interrupted calibration left: no profile, and the journal (if any entry finished) and what to do
    with it."""
    journal = progress_path(output)
    n = count_entries(journal)
    if n == 0:
        return "interrupted: no profile was written and no entry had finished"
    return (f"interrupted: no profile was written; the {n} finished {'entry is' if n == 1 else 'entries are'} kept "
            f"in {journal}: run the same command with --resume to continue, or delete that file to start over")


def library_command(arguments: dict) -> str:
    """How a library call is recorded in a profile: ``fxfusion.calibrate(hardware='x', quick=True)``, the arguments
    given (those left at their defaults omitted)."""
    defaults = {k: p.default for k, p in inspect.signature(calibrate).parameters.items()}
    shown = [f"{k}={str(v) if isinstance(v, Path) else v!r}" for k, v in arguments.items()
             if k in defaults and v is not None and not callable(v) and (v != defaults[k] or k == "hardware")
             and k not in ("spec", "clock", "guard", "command")]
    return f"fxfusion.calibrate({', '.join(shown)})"


def calibrate(hardware: str = "generic-cpu", device: str = "cpu", patterns: str | None = "all",
              dtypes: str | Iterable[str] | None = None, quick: bool = False, sizes: str | None = None,
              peak_gflops: float | None = None, peak_bandwidth: float | None = None,
              output: str | Path | None = None, resume: bool = False, threads: int | None = None,
              compile_modes: tuple[str, ...] = ("compile", "compile_reduce_overhead"),
              spec: TimingSpec | None = None, clock: Clock | None = None, seed: int = 0, command: str | None = None,
              on_entry: Callable[[int, int, Entry | None, str], None] | None = None,
              skip_ceilings: bool = False, on_note: Callable[[str], None] | None = None,
              guard: NoiseGuard | None = None, on_thunks: Callable[[str, dict[str, Thunk]], None] | None = None,
              max_shapes: int | None = None) -> Profile:
    """Measure the pattern library and return (and, with ``output``, atomically write) a validated Profile.

    ``on_entry(done, total, entry, message)`` is called as each entry starts (entry None) and ends (message
    ``"done"``, or ``"resumed"`` for one read back from the journal); ``on_note(message)`` for a phase that is not an
    entry and for warnings as soon as they are known (they are also in the profile's ``metadata.warnings``).
    ``guard`` watches for noise (default: this machine's load, steal and a reference kernel on ``device``);
    ``on_thunks`` is passed to :func:`measure_entry`; ``max_shapes`` keeps the first shapes of each pattern's size
    set only.

    Interrupted (KeyboardInterrupt), it writes no profile; the entries finished so far stay in the journal
    ``OUTPUT.progress.jsonl`` for ``resume=True`` (:func:`interrupted_message` says so)."""
    command = command or library_command(dict(locals()))
    device = check_device(device)
    hw = resolve(hardware, peak_gflops, peak_bandwidth, device)
    chosen = select_patterns(patterns)
    dtype_names = parse_dtypes(dtypes) if dtypes else default_dtypes(device)
    sizes = sizes or ("quick" if quick else ("gpu" if is_cuda(device) else "full"))
    if sizes not in ("quick", "full", "gpu"):
        raise FxFusionError(f"unknown size set {sizes!r}; choose quick, full or gpu")
    output = check_writable(output) if output else None  # the profile and its journal, before any measuring
    set_threads(threads)
    spec = spec or (QUICK_SPEC if quick else FULL_SPEC)
    # Watch the real machine for noise, unless the clock is a caller's (a fake clock times no reference kernel).
    guard = guard or (NoiseGuard.for_device(device) if clock is None else NoiseGuard())
    clock = clock or clock_for(device)
    name = device_name(device)
    warnings = [w for w in [mismatch_warning(hw, device, name)] if w]

    def note(message: str, warning: bool = False) -> None:
        if warning:
            warnings.append(message)
        if on_note:
            on_note(("warning: " if warning else "") + message)

    progress = progress_path(output)
    done = {}
    if progress:  # what the journal's entries were measured under: a resumed run must match it (journal.py)
        settings = {"hardware": hw.name, "device": str(device), "threads": torch.get_num_threads(),
                    "patterns": [p.name for p in chosen], "dtypes": dtype_names, "sizes": sizes,
                    "rounds": spec.rounds, "compile_modes": list(compile_modes),
                    "peaks": [hw.peak_gflops, hw.peak_bandwidth_gbs], "seed": seed, "max_shapes": max_shapes}
        existed = progress.exists()
        read = open_journal(progress, settings, resume)
        done = read.entries
        if resume:
            note(read.summary(progress) if existed else f"resuming: no journal at {progress}, so nothing to reuse")

    tf32 = tf32_state()
    ceilings = {"matmul": [], "bandwidth": [], "best_gflops": {}, "best_gbs": None}
    if not skip_ceilings:
        note(f"measuring the ceilings: matmul ({', '.join(dtype_names)}) and copy bandwidth, at most "
             f"{CEILING_SPEC.budget_s:g} s each")
        skipped: list[str] = []
        ceilings = measure_ceilings(hw, device, [dtype_record(d).torch for d in dtype_names], sizes, clock,
                                    tf32=tf32["matmul"] and is_cuda(device), notes=skipped)
        for message in skipped + slow_dtypes(ceilings["best_gflops"], device, clock):
            note(message, warning=True)
    jobs = [(p, s, d) for p in chosen for s in p.shapes[sizes][:max_shapes] for d in dtype_names]
    entries = []
    for i, (pattern, shape, dtype_name) in enumerate(jobs):
        key = entry_key(pattern.name, shape, dtype_name, device)
        if key in done:
            entries.append(done[key])
            if on_entry:
                on_entry(i + 1, len(jobs), done[key], "resumed")
            continue
        if on_entry:
            on_entry(i, len(jobs), None, f"{pattern.name} {' '.join(f'{k}={v}' for k, v in shape.items())} "
                                         f"{dtype_name}")
        entry = measure_entry(pattern, dict(shape), dtype_name, device, hw, spec, clock, ceilings, seed,
                              compile_modes, guard, on_thunks)
        entries.append(entry)
        if progress:  # the journal holds only schema-valid entries, one per line
            append(progress, entry)
        if on_entry:
            on_entry(i + 1, len(jobs), entry, "done")
        if is_cuda(device):
            torch.cuda.empty_cache()

    triton_version = None
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        pass
    metadata = {
        "hardware": hw.name, "device": str(device), "device_name": name, "torch_version": torch.__version__,
        "triton_version": triton_version, "fxfusion_version": __version__, "python_version": platform.python_version(),
        "threads": torch.get_num_threads(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command, "host": socket.gethostname(),
        "quick": bool(quick), "tf32": tf32,
        "timing": {"method": ("CUDA events; per sample the L2 flushed and the GPU idle, one call alone (isolated), "
                              "then a batch back to back (pipelined)" if is_cuda(device)
                              else f"perf_counter, {torch.get_num_threads()} threads; per sample one call alone "
                                   "(isolated), then a batch back to back (pipelined)"),
                   "rounds": spec.rounds, "confidence": CONFIDENCE, "min_effect": MIN_EFFECT,
                   "size_set": sizes, "regimes": list(REGIMES)},
        "noise": noise_summary(entries, guard),
        "warnings": list(dict.fromkeys(warnings + noise_warnings(entries) + [w for w in [cupti_warning()] if w])),
    }
    hardware_d = {"name": hw.name, "device": hw.device, "peak_gflops": hw.peak_gflops,
                  "peak_bandwidth_gbs": hw.peak_bandwidth_gbs, "source": hw.source}
    profile = Profile(metadata=metadata, hardware=hardware_d, ceilings=ceilings, entries=entries)
    if output:
        profile.save(output)
        if progress and progress.exists():
            progress.unlink()
    return profile




