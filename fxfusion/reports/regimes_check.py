"""The pipelined regime against an independent probe, and for every disagreement which definition differs.

1. Calibrate a chosen subset of the library (both regimes, noise guard on; the first ``--sizes`` shapes of each
   pattern's size set, ``gpu`` on CUDA, ``quick`` on a CPU; ``--resume`` after SIGINT), or with ``--profile`` take a
   shipped profile as it is and build its entries' variants again (same seeded inputs).
2. Time each variant with the plain loop of :func:`fxfusion.measure.probe.probe` (no fxfusion timing code).
3. Per cell (entry, variant): the pipelined median within +-20% of the probe?  For a fused variant, the pipelined
   verdict against the probe's direction (fuse above 1.1x, avoid below 0.9x); targets >= 90% each.
4. A cell that disagrees is timed again under each other definition of what the variant includes
   (:func:`fxfusion.measure.probe.retime`; ``--definitions all``: every cell), and :func:`attribute` names each one
   under which it agrees, else what the numbers alone show (:data:`CAUSES`); the summary counts them per cause.
``benchmarks/bench_regimes.py`` is its command line (:func:`run`; flags and outputs: benchmarks/README.md);
``--from-json`` attributes a run's cells.json again without timing anything.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from fxfusion.errors import FxFusionError
from fxfusion.measure.probe import (CAUSE_OF, FIRST_CALL, PROBE_BATCH_S, PROBE_REPS, REDEFINED_REPS, CpuBatchTimer,
                                    CudaBatchTimer, first_call_counted, probe, retime)

PATTERNS = ("linear_bias_gelu,linear_bias_relu,add_layernorm,rmsnorm,full_attention,causal_attention,"
            "conv2d_bn_relu,qk_softmax")
SIZES = 3  # the first three of each pattern's gpu size set: launch-bound, middling, device-bound
WITHIN = 0.20  # a pipelined median within +-20% of the probe agrees
DIRECTION_BAND = (0.9, 1.1)  # probe speedups inside it are too close to 1 to have a direction
TARGET = 0.90

SAME_FACTOR, EAGER_BASELINE, UNATTRIBUTED = "same factor as eager", "eager baseline", "unattributed"
UNSTEADY = "machine speed moved"
CAUSES = {  # why a cell disagrees: the first four from a definition re-timed (probe.CAUSE_OF), the rest from numbers
    "weight preparation": "agrees with the variant's load-time preparation (BN fold, weight concat/layout) per call",
    "layout conversion": "agrees with the channels-last conversion moved out of the call, or the output converted back",
    "weight preparation + layout conversion": "agrees only with both in the call (a loop that does all inline)",
    "first call": "agrees with each probe batch's first call left out, as pipelined does (read offline: upper bound)",
    SAME_FACTOR: "variant and eager off by the same factor, the speedup agrees: host launch rate at another moment",
    EAGER_BASELINE: "the variant's median agrees, eager's does not: the speedup moves with the baseline's timing",
    UNSTEADY: "eager, probed again with the re-timings, moved beyond +-20% of its probe: the re-timings are not read",
    UNATTRIBUTED: "nothing re-timed or read explains it (calibration: L2 flushed, variants alternate; probe: not)",
}


@dataclass
class Cell:
    key: str
    variant: str
    pipelined_ms: float
    isolated_ms: float
    probe_ms: float
    within: bool  # pipelined median within +-WITHIN of the probe
    isolated_within: bool
    pipelined_speedup: float | None = None  # fused variants: the calibration's pipelined speedup over eager
    pipelined_verdict: str | None = None
    probe_speedup: float | None = None  # probe(eager) / probe(variant)
    direction: str | None = None  # "agree" / "disagree" outside DIRECTION_BAND, None inside it (or eager)
    redefined: dict[str, dict] = field(default_factory=dict)  # definition -> {"ms", "eager_ms"} (or {"error"})
    differs_in: list[str] | None = None  # set for a cell that disagrees (attribute)

    @property
    def disagrees(self) -> bool:
        return not self.within or self.direction == "disagree"


def _within(a: float, b: float) -> bool:
    return b > 0 and abs(a / b - 1.0) <= WITHIN


def _direction_of(pipelined_speedup: float, verdict: str | None, probe_speedup: float) -> str | None:
    low, high = DIRECTION_BAND
    if low <= probe_speedup <= high:
        return None
    faster = probe_speedup > high
    same_side = (pipelined_speedup > 1.0) == faster
    opposite = verdict == ("avoid" if faster else "fuse")
    return "agree" if same_side and not opposite else "disagree"


def entry_cells(entry, got: dict[str, float], redefined: dict[str, dict] | None = None) -> list[Cell]:
    """One entry's cells: each variant timed in both regimes and probed (``got``: variant -> ms)."""
    cells = []
    for v in entry.variants:
        if v.status != "ok" or v.pipelined is None or v.name not in got:
            continue
        c = Cell(entry.key(), v.name, v.pipelined.median_ms, v.median_ms, got[v.name],
                 _within(v.pipelined.median_ms, got[v.name]), _within(v.median_ms, got[v.name]),
                 redefined=dict((redefined or {}).get(v.name, {})))
        if v.kind != "eager" and "eager" in got and v.pipelined.speedup is not None:
            c.pipelined_speedup, c.pipelined_verdict = v.pipelined.speedup.median, v.pipelined.verdict
            c.probe_speedup = got["eager"] / got[v.name]
            c.direction = _direction_of(c.pipelined_speedup, c.pipelined_verdict, c.probe_speedup)
        cells.append(c)
    return cells


def compare_cells(profile, probes: dict[str, dict[str, float]], redefined: dict | None = None) -> list[Cell]:
    """Every entry's cells (``probes``: key -> variant -> ms; ``redefined``: key -> variant -> figures), attributed."""
    cells = [c for e in profile.entries
             for c in entry_cells(e, probes.get(e.key(), {}), (redefined or {}).get(e.key()))]
    return attribute_cells(cells)


# -- which definition differs ---------------------------------------------------------------------------------------

def _closer(before: float, after: float) -> bool:  # a ratio moved at least half of the way to 1 (in log)
    return abs(math.log(after)) <= 0.5 * abs(math.log(before))


def _agrees(c: Cell, pipelined_ms: float, probe_ms: float, pipelined_speedup: float | None,
            probe_speedup: float | None) -> bool:
    """Whether cell ``c`` agrees with one side taken under another definition: the median where it missed, the
    direction where it disagreed, each within its bound and at least half of the gap closed."""
    if not c.within and not (_within(pipelined_ms, probe_ms) and _closer(c.pipelined_ms / c.probe_ms,
                                                                          pipelined_ms / probe_ms)):
        return False
    return c.direction != "disagree" or (None not in (pipelined_speedup, probe_speedup) and _direction_of(
        pipelined_speedup, c.pipelined_verdict, probe_speedup) != "disagree" and _closer(
        c.pipelined_speedup / c.probe_speedup, pipelined_speedup / probe_speedup))


def attribute(c: Cell, eager: Cell | None) -> list[str]:
    """Why cell ``c`` disagrees (:data:`CAUSES`): each definition re-timed on the device under which it agrees; else
    what its numbers and eager's show: the first call counted in the probe's batches, the same factor as eager, the
    eager baseline; else unattributed."""
    causes, timed = [], {n: alt for n, alt in c.redefined.items() if "ms" in alt}
    steady = {n: alt for n, alt in timed.items()  # eager probed again with them: the machine kept its speed
              if eager is None or _within(alt.get("eager_again_ms", eager.probe_ms), eager.probe_ms)}
    for name, alt in steady.items():
        sp = alt["eager_ms"] / alt["ms"] if c.pipelined_speedup is not None else None
        if _agrees(c, c.pipelined_ms, alt["ms"], c.pipelined_speedup, sp) and CAUSE_OF[name] not in causes:
            causes.append(CAUSE_OF[name])
    if causes or (timed and not steady):
        return causes or [UNSTEADY]
    counted = first_call_counted(c.isolated_ms, c.pipelined_ms)
    fused = c.pipelined_speedup is not None and eager is not None
    sp = first_call_counted(eager.isolated_ms, eager.pipelined_ms) / counted if fused else None
    if FIRST_CALL not in c.redefined and _agrees(c, counted, c.probe_ms, sp, c.probe_speedup):
        return ["first call"]  # read off the numbers only where the card did not re-time it
    if fused and not c.within and c.direction != "disagree" and _within(c.probe_speedup, c.pipelined_speedup):
        return [SAME_FACTOR]
    return [EAGER_BASELINE] if fused and c.within and not eager.within else [UNATTRIBUTED]


def attribute_cells(cells: list[Cell]) -> list[Cell]:
    """``differs_in`` of each disagreeing cell; an eager one nothing else explains is off by its fused cells' factor
    when at least half of them are."""
    by_key: dict[str, list[Cell]] = {}
    for c in cells:
        by_key.setdefault(c.key, []).append(c)
    for group in by_key.values():
        eager = next((c for c in group if c.variant == "eager"), None)
        for c in group:
            c.differs_in = attribute(c, eager) if c.disagrees else None
        fused = [f for f in group if f.pipelined_speedup is not None]
        if eager is not None and eager.differs_in == [UNATTRIBUTED] and fused and 2 * sum(
                _within(f.pipelined_ms / f.probe_ms, eager.pipelined_ms / eager.probe_ms) for f in fused) >= len(fused):
            eager.differs_in = [SAME_FACTOR]
    return cells


def redefine(cells: list[Cell], thunks: dict, builds: dict, inputs: dict | None, timer, every: bool = False) -> dict:
    """One entry's disagreeing cells (all: ``every``) timed again under the other definitions, and attributed."""
    chosen = [c for c in cells if (every or c.disagrees) and c.variant in thunks]
    if "eager" not in thunks or not chosen:
        return {}
    got = retime([c.variant for c in chosen], thunks, builds, inputs, timer)
    for c in chosen:
        c.redefined = got[c.variant]
    attribute_cells(cells)
    return got


def summary(cells: list[Cell]) -> dict:
    directed, n = [c for c in cells if c.direction is not None], len(cells)
    within = sum(c.within for c in cells) / n if n else 0.0
    agree = sum(c.direction == "agree" for c in directed) / len(directed) if directed else 0.0
    causes = Counter(cause for c in cells for cause in (c.differs_in or ()))
    return {"cells": n, "within_share": within, "isolated_within_share": sum(c.isolated_within for c in cells) / n
            if n else 0.0, "directed_cells": len(directed), "direction_agreement": agree,
            "disagreeing": sum(c.disagrees for c in cells), "causes": dict(causes.most_common()),
            "ok": n > 0 and within >= TARGET and (not directed or agree >= TARGET)}


def rows(cells: list[Cell]) -> list[str]:
    width = max((len(c.key) for c in cells), default=10)
    out = [f"{'entry':<{width}}  {'variant':<24} {'pipelined ms':>12} {'probe ms':>10} {'pipe/probe':>10} "
           f"{'isolated ms':>11}  pipelined verdict (x)     probe x  direction  differs in"]
    for c in cells:
        verdict = f"{c.pipelined_verdict} ({c.pipelined_speedup:.2f})" if c.pipelined_verdict else "-"
        out.append(f"{c.key:<{width}}  {c.variant:<24} {c.pipelined_ms:>12.4f} {c.probe_ms:>10.4f} "
                   f"{c.pipelined_ms / c.probe_ms:>9.2f}{' ' if c.within else '!'} {c.isolated_ms:>11.4f}  "
                   f"{verdict:<24} {c.probe_speedup if c.probe_speedup is not None else float('nan'):>8.2f}  "
                   f"{c.direction or '-':<9}  {', '.join(c.differs_in) if c.differs_in else '-'}")
    return out


def redefined_rows(cells: list[Cell]) -> list[str]:
    """Every re-timed cell: its probe and pipelined figures, then each definition's ms and speedup over eager."""
    out = []
    for c in cells:
        if not c.redefined:
            continue
        sp = f", pipelined {c.pipelined_speedup:.2f}x, probe {c.probe_speedup:.2f}x" if c.probe_speedup else ""
        out.append(f"{c.key} {c.variant}: pipelined {c.pipelined_ms:.4f} ms, probe {c.probe_ms:.4f} ms{sp}; differs "
                   f"in: {', '.join(c.differs_in) if c.differs_in else '- (agrees)'}")
        out += [f"    {name}: " + (f"{alt['ms']:.4f} ms ({alt['ms'] / c.probe_ms:.2f} of the probe)" + (
            f", {alt['eager_ms'] / alt['ms']:.2f}x over eager" if c.variant != "eager" else "") if "ms" in alt
            else str(alt.get("error"))) for name, alt in c.redefined.items()]
    return out


def summary_lines(s: dict) -> list[str]:
    causes = s.get("causes", {})
    return [f"pipelined medians within +-{WITHIN:.0%} of the probe: {s['within_share']:.0%} of {s['cells']} cells "
            f"(target >= {TARGET:.0%}); isolated medians, for contrast: {s['isolated_within_share']:.0%}",
            f"verdict direction agreement where the probe is outside {DIRECTION_BAND[0]}-{DIRECTION_BAND[1]}x: "
            f"{s['direction_agreement']:.0%} of {s['directed_cells']} cells (target >= {TARGET:.0%})",
            f"disagreeing cells: {s.get('disagreeing', 0)}; differs in: "
            + (", ".join(f"{k} {v}" for k, v in causes.items()) or "-")]  \
        + [f"  {k}: {CAUSES[k]}" for k in causes if k in CAUSES] + ["OK" if s["ok"] else "MISSED"]


def read_cells(path: Path) -> list[Cell]:
    """The cells of a run's ``cells.json`` (or ``.json.gz``, or the folder holding one), attributed again."""
    if path.is_dir():
        path = next(p for p in (path / "cells.json", path / "cells.json.gz") if p.exists())
    text = gzip.open(path, "rt").read() if path.suffix == ".gz" else path.read_text()
    known = set(Cell.__dataclass_fields__)
    return attribute_cells([Cell(**{k: v for k, v in d.items() if k in known}) for d in json.loads(text)["cells"]])


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arg = ap.add_argument
    arg("--out", type=Path, help="folder for the profile, the probes, the cells and the log")
    arg("--device", default="cuda")
    arg("--hardware", help="registry name (default h200 on CUDA, generic-cpu on a CPU)")
    arg("--patterns", default=PATTERNS)
    arg("--sizes", default=str(SIZES), help="the first N shapes of each pattern's size set, 'all', or a set's name")
    arg("--dtypes", help="default bfloat16 on CUDA, float32 on a CPU; with --profile, every dtype of the profile")
    arg("--no-compile", action="store_true", help="skip the torch.compile variants")
    arg("--compile-modes", default="compile", help="compile, or compile,compile_reduce_overhead (what calibrate does)")
    arg("--resume", action="store_true", help="continue a run cut short: the journal and probes in --out are kept")
    arg("--profile", type=Path, help="check this profile as it is: its variants built again here and probed")
    arg("--definitions", choices=("disagreeing", "all", "none"), default="disagreeing",
        help="which cells are timed again under the other definitions")
    arg("--from-json", type=Path, help="a run's cells.json[.gz] or its folder: attribute again, time nothing")
    return ap


def run(argv: list[str] | None = None) -> int:
    """The command line (``benchmarks/bench_regimes.py``): 0 done, 3 cut short (SIGINT); FxFusionError on bad flags."""
    args = _parser().parse_args(argv)
    if args.from_json is not None:
        cells = read_cells(args.from_json)
        print("\n".join(rows([c for c in cells if c.disagrees]) + [""] + summary_lines(summary(cells))))
        return 0
    if args.out is None:
        raise FxFusionError("--out DIR is needed (or --from-json to re-read a run)")
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    from fxfusion.calibration.calibrate import check_device
    from fxfusion.fusions.registry import select_patterns
    from fxfusion.measure.hardware import device_name

    device = check_device(args.device)
    cuda, named = device.type == "cuda", args.sizes in ("all", "quick", "full", "gpu")
    args.size_set = args.sizes if args.sizes in ("quick", "full", "gpu") else ("gpu" if cuda else "quick")
    args.max_shapes = None if named else int(args.sizes)
    args.dtypes = args.dtypes or (None if args.profile else ("bfloat16" if cuda else "float32"))
    args.modes = () if args.no_compile else tuple(m.strip() for m in args.compile_modes.split(",") if m.strip())
    args.chosen = {p.name: p for p in select_patterns(args.patterns)}
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"bench_regimes: {datetime.now(timezone.utc).isoformat(timespec='seconds')}, {device_name(device)} "
        f"({device}), torch {torch.__version__}")
    say(f"command: python3 {' '.join(sys.argv if argv is None else ['bench_regimes.py', *argv])}")
    first = "all" if args.max_shapes is None else f"the first {args.max_shapes}"
    say(f"chose: patterns {', '.join(args.chosen)}; {first} shapes of each one's {args.size_set} size set; dtypes "
        f"{args.dtypes or 'all'}; variants eager, manual{''.join(', ' + m for m in args.modes)}"
        f"{'; resumed from the journal in ' + str(args.out) if args.resume else ''}"
        f"{'; checking ' + str(args.profile) + ' as it is' if args.profile else ''}; re-timed under the other "
        f"definitions: {args.definitions} cells")
    say(f"probe: back-to-back calls between two {'CUDA events' if cuda else 'perf_counter reads'}, batches of "
        f"~{PROBE_BATCH_S * 1e3:g} ms, median of {PROBE_REPS} batches ({REDEFINED_REPS} for a re-defined variant)")
    timer = args.timer = CudaBatchTimer(device) if cuda else CpuBatchTimer()
    state = {name: json.loads((args.out / f"{name}.json").read_text())  # a resumed run keeps what it had probed
             if args.resume and (args.out / f"{name}.json").exists() else {} for name in ("probes", "redefined")}

    def keep() -> None:  # kept if the run is cut short
        for name in ("probes", "redefined"):
            (args.out / f"{name}.json").write_text(json.dumps(state[name], indent=1) + "\n")

    def probed(entry, thunks, inputs=None) -> None:  # variants alive: probed as defined, then under the others
        got = state["probes"].get(entry.key()) or {name: probe(fn, timer) * 1e3 for name, fn in thunks.items()}
        pattern, cells = args.chosen[entry.pattern], entry_cells(entry, got)
        if args.definitions == "all" or args.definitions == "disagreeing" and any(c.disagrees for c in cells):
            inputs = inputs or _inputs(pattern, entry, device)[0]  # made again only for an entry to re-time
            state["redefined"][entry.key()] = redefine(cells, thunks, {mv.name: mv.build for mv in pattern.manual},
                                                       inputs, timer, every=args.definitions == "all")
        state["probes"][entry.key()] = got  # with its re-timings: a run resumed after SIGINT skips the entry
        keep()

    start = time.perf_counter()
    try:
        profile = (_probe_profile if args.profile else _calibrate)(args, device, state, probed, say)
    except KeyboardInterrupt:
        keep()
        say(f"interrupted after {time.perf_counter() - start:.0f} s: the finished entries are kept in {args.out} "
            "(journal, probes); run again with --resume")
        (args.out / "bench_regimes.interrupted.txt").write_text("\n".join(lines) + "\n")
        return 3
    noise = profile.metadata.get("noise")
    say(f"{'probed' if args.profile else 'calibrated and probed'} {len(profile.entries)} entries in "
        f"{time.perf_counter() - start:.0f} s" + (f"; noise: {noise['contended_entries']} contended, "
        f"{noise['remeasured_entries']} measured again, {len(noise['noisy'])} regime verdicts noisy" if noise else ""))
    keep()
    cells = compare_cells(profile, state["probes"], state["redefined"])
    for line in [""] + rows(cells) + [""] + redefined_rows(cells) + [""] + summary_lines(s := summary(cells)):
        say(line)
    (args.out / "bench_regimes.txt").write_text("\n".join(lines) + "\n")
    (args.out / "cells.json").write_text(json.dumps({"summary": s, "cells": [asdict(c) for c in cells]}, indent=1)
                                         + "\n")
    return 0


def _inputs(pattern, entry, device) -> tuple[dict, object]:  # as the calibration makes them (seed 0), and dtype
    import torch
    from fxfusion.measure.devices import dtype
    dt = dtype(entry.dtype).torch
    return pattern.make_inputs(entry.shape, dt, device, torch.Generator().manual_seed(0)), dt


def _calibrate(args, device, state, probed, say):
    """Calibrate the chosen subset, probing each entry while its variants are alive."""
    from fxfusion.calibration import calibrate as cal

    pending, start = {}, time.perf_counter()

    def on_entry(done, total, entry, message):
        if entry is not None and message == "done" and entry.key() in pending:
            probed(entry, pending.pop(entry.key()))
        if entry is not None:
            print(f"[{done}/{total}, {time.perf_counter() - start:.0f} s] {entry.key()}: isolated "
                  f"{entry.decision.verdict}, pipelined {entry.pipelined_decision.verdict}", flush=True)

    def on_thunks(key, thunks):  # probed as the calibration left them; kept until the entry is done
        state["probes"][key] = {name: probe(fn, args.timer) * 1e3 for name, fn in thunks.items()}
        pending[key] = thunks

    return cal.calibrate(hardware=args.hardware or ("h200" if device.type == "cuda" else "generic-cpu"),
                         device=str(device), patterns=args.patterns, dtypes=args.dtypes, sizes=args.size_set,
                         quick=device.type != "cuda", compile_modes=args.modes,
                         output=args.out / "profile_regimes.json",
                         command="fxfusion calibrate (benchmarks/bench_regimes.py " + " ".join(sys.argv[1:]) + ")",
                         on_thunks=on_thunks, on_entry=on_entry, max_shapes=args.max_shapes, resume=args.resume)


def _probe_profile(args, device, state, probed, say):
    """Every chosen entry of the profile ``args.profile`` as it is: its variants built again here and probed."""
    from fxfusion.calibration.variants import build_variants
    from fxfusion.measure.hardware import device_name
    from fxfusion.profiles.profile import Profile

    profile = Profile.load(args.profile)
    if not any(e.pipelined_decision for e in profile.entries):
        say(f"warning: {args.profile} was measured in one regime (schema 1.0): it has no pipelined median to compare")
    sizes = (profile.metadata.get("timing") or {}).get("size_set") or args.size_set
    if profile.metadata.get("device_name") != device_name(device):
        say(f"warning: {args.profile} was measured on {profile.metadata.get('device_name')}, this is "
            f"{device_name(device)}: its medians are not this card's")
    profile.entries = [e for e in profile.entries if e.pattern in args.chosen and (
        args.dtypes is None or e.dtype in args.dtypes.split(",")) and e.shape in [
        dict(s) for s in args.chosen[e.pattern].shapes[sizes][:args.max_shapes]]]
    todo = [e for e in profile.entries if not (args.resume and e.key() in state["probes"])]  # --resume: the rest
    for i, e in enumerate(todo):
        pattern = args.chosen[e.pattern]
        inputs, dt = _inputs(pattern, e, device)
        built = build_variants(pattern, e.shape, dt, str(device), inputs,
                               tuple(m for m in args.modes if e.variant(m) is not None))
        probed(e, {b.name: b.thunk for b in built if b.status == "ok" and e.variant(b.name) is not None}, inputs)
        print(f"[{i + 1}/{len(todo)}] {e.key()}: probed", flush=True)
    return profile
