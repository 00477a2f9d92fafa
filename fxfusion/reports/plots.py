"""Plots for reports: matplotlib figures drawn off-screen (Agg) into PNG data URIs, so a report is one HTML file.

matplotlib is an optional extra (``pip install 'fxfusion[report]'``) and is imported only when a plot is drawn.
Figures use the object-oriented API (``matplotlib.figure.Figure`` on an Agg canvas), never pyplot: no global
backend switch, no window, nothing left open between plots.

Two kinds of plot:
  * speedup: for one (pattern, dtype), the speedup over eager of every fused variant against problem size (FLOPs
    per call, log scale); the line is the median, the band and error bar the 95% bootstrap interval, and the
    shaded strip around 1x the neutral zone (``1 +- min_effect``) inside which no verdict can be ``fuse``/``avoid``.
  * roofline: for one dtype, every measured variant at its arithmetic intensity (FLOPs / bytes it moves, the same
    byte model as the profile's ``gbs``) and achieved GFLOP/s, under the measured ceilings (best matmul GFLOP/s,
    best copy GB/s) and, dashed, the datasheet peaks.
Whatever cannot be drawn (a variant that never ran, an entry with no FLOPs) is named in the plot's caption.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import Any, Iterable

from fxfusion.errors import FxFusionError
from fxfusion.profiles.profile import Entry, Profile

MISSING_MATPLOTLIB = "matplotlib is needed for reports: pip install 'fxfusion[report]'"
DPI = 100
SIZE = (7.0, 4.2)  # inches; 700 x 420 px at DPI
KIND_MARKERS = {"eager": "o", "manual": "^", "compile": "s"}


@dataclass(frozen=True)
class Plot:
    key: str  # "speedup:<pattern>:<dtype>" or "roofline:<dtype>"
    title: str
    data_uri: str  # "data:image/png;base64,..."
    caption: str  # what is drawn, and what was left out and why


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise FxFusionError(MISSING_MATPLOTLIB) from None
    return Figure, FigureCanvasAgg


def require_matplotlib() -> None:
    """Fail early (before any measurement is read or file written) when matplotlib is missing."""
    _matplotlib()


def _new_figure(size: tuple[float, float] = SIZE):
    Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_data_uri(fig) -> str:
    buf = io.BytesIO()
    # No "Software" metadata: the same profile gives the same bytes whatever the matplotlib version.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _shape_text(shape: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in shape.items())


# -- speedup against problem size ------------------------------------------------------------------------------------

def speedup_plot(entries: list[Entry], min_effect: float) -> Plot:
    """Speedup over eager of each fused variant against FLOPs, for entries of one pattern and one dtype."""
    entries = sorted(entries, key=lambda e: (e.flops, tuple(e.shape.values())))
    pattern, dtype = entries[0].pattern, entries[0].dtype
    names = list(dict.fromkeys(v.name for e in entries for v in e.variants if v.kind != "eager"))
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.axhspan(1 - min_effect, 1 + min_effect, color="0.6", alpha=0.25, lw=0,
               label=f"neutral zone (1 \u00b1 {min_effect:.0%})")
    ax.axhline(1.0, color="0.3", lw=0.8)
    xs = [max(e.flops, 1) for e in entries]
    left_out = []
    for name, color in zip(names, _colors(len(names))):
        med, lo, hi = [], [], []
        missing = []
        for e in entries:
            v = e.variant(name)
            if v is not None and v.status == "ok" and v.speedup is not None:
                med.append(v.speedup.median), lo.append(v.speedup.ci_low), hi.append(v.speedup.ci_high)
            else:
                med.append(math.nan), lo.append(math.nan), hi.append(math.nan)
                missing.append(f"{_shape_text(e.shape)}: {v.status if v else 'not measured'}")
        if len(missing) == len(entries):
            left_out.append(f"{name} ({missing[0].split(': ', 1)[1]} at every size)")
            continue
        if missing:
            left_out.append(f"{name} at {'; '.join(missing)}")
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, lw=0)
        err = [[m - l if m == m else 0 for m, l in zip(med, lo)], [h - m if m == m else 0 for m, h in zip(med, hi)]]
        ax.errorbar(xs, med, yerr=err, color=color, marker="o", ms=4, lw=1.5, capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")  # 2x faster and 2x slower lie equally far from 1x
    _speedup_ticks(ax)
    ax.set_xlabel("problem size (FLOPs per call, log scale)")
    ax.set_ylabel("speedup over eager (x, log scale)")
    ax.set_title(f"{entries[0].title}, {dtype}: speedup over eager")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    sizes = "; ".join(f"{_shape_text(e.shape)} = {e.flops:.3g} FLOPs ({e.decision.verdict}"
                      f"{', noisy' if e.decision.noisy else ''})" for e in entries)
    caption = (f"Median speedup over eager per fused variant, 95% bootstrap interval as band and error bar, "
               f"grey strip: neutral zone. Sizes: {sizes}.")
    if left_out:
        caption += f" Not drawn: {'; '.join(left_out)}."
    return Plot(key=f"speedup:{pattern}:{dtype}", title=f"{entries[0].title} ({pattern}), {dtype}",
                data_uri=to_data_uri(fig), caption=caption)


def _speedup_ticks(ax) -> None:
    """Plain ``0.5x 1x 2x`` labels on the log speedup axis (matplotlib would write 10^0)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.yaxis.set_major_locator(LogLocator(base=2.0))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}x"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))


def speedup_plots(profile: Profile) -> list[Plot]:
    """One speedup plot per (pattern, dtype), in the order the profile first lists them."""
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in profile.entries:
        groups.setdefault((e.pattern, e.dtype), []).append(e)
    min_effect = float(profile.metadata.get("timing", {}).get("min_effect", 0.02))
    return [speedup_plot(group, min_effect) for group in groups.values()]


# -- roofline --------------------------------------------------------------------------------------------------------

def _points(entries: Iterable[Entry]) -> tuple[list[dict[str, Any]], list[str]]:
    points, skipped = [], []
    for e in entries:
        for v in e.variants:
            if v.status != "ok" or not v.gflops:
                continue
            nbytes = e.bytes_unfused if v.kind == "eager" else e.bytes_fused
            if e.flops <= 0 or nbytes <= 0:
                skipped.append(f"{e.pattern} {_shape_text(e.shape)} {v.name} (no FLOPs or bytes to place it by)")
                continue
            points.append({"pattern": e.pattern, "kind": v.kind, "ai": e.flops / nbytes, "gflops": v.gflops})
    return points, skipped


def roofline_plot(profile: Profile, dtype: str) -> Plot:
    """Every measured variant of one dtype against the measured ceilings and the datasheet peaks."""
    entries = [e for e in profile.entries if e.dtype == dtype]
    points, skipped = _points(entries)
    ceilings, hw = profile.ceilings, profile.hardware
    best_gbs = ceilings.get("best_gbs") or None
    best_gflops = (ceilings.get("best_gflops") or {}).get(dtype)
    peak_gflops = hw["peak_gflops"].get(dtype) or hw["peak_gflops"].get("float32")
    peak_gbs = hw["peak_bandwidth_gbs"]

    ais = [p["ai"] for p in points] or [1.0]
    ridges = [g / b for g, b in ((best_gflops, best_gbs), (peak_gflops, peak_gbs)) if g and b]
    lo, hi = min(ais + ridges) / 4, max(ais + ridges) * 4
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]

    fig = _new_figure((8.5, 4.6))
    ax = fig.add_subplot()
    if peak_gflops and peak_gbs:
        ax.plot(grid, [min(peak_gflops, peak_gbs * x) for x in grid], color="0.5", ls="--", lw=1,
                label=f"datasheet: {peak_gflops:.4g} GFLOP/s, {peak_gbs:.4g} GB/s")
    if best_gflops and best_gbs:
        ax.plot(grid, [min(best_gflops, best_gbs * x) for x in grid], color="black", lw=1.8,
                label=f"measured: {best_gflops:.4g} GFLOP/s (matmul), {best_gbs:.4g} GB/s (copy)")
    patterns = list(dict.fromkeys(p["pattern"] for p in points))
    for pattern, color in zip(patterns, _colors(len(patterns))):
        label = pattern  # one legend line per pattern (colour); markers say the variant kind
        for kind, marker in KIND_MARKERS.items():
            mine = [p for p in points if p["pattern"] == pattern and p["kind"] == kind]
            if mine:
                ax.scatter([p["ai"] for p in mine], [p["gflops"] for p in mine], color=color, marker=marker,
                           s=30, edgecolors="black", linewidths=0.4, label=label)
                label = None
    for kind, marker in KIND_MARKERS.items():
        if any(p["kind"] == kind for p in points):
            ax.scatter([], [], color="white", edgecolors="black", marker=marker, label=f"marker: {kind}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs per byte moved, log)")
    ax.set_ylabel("achieved GFLOP/s (log)")
    ax.set_title(f"Roofline, {dtype}: {profile.metadata.get('hardware', '')}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    caption = (f"{len(points)} measured variants of {len(entries)} {dtype} entries. Eager moves the unfused bytes, "
               f"fused variants the fused bytes (the profile's byte model). Solid: measured ceilings; dashed: "
               f"datasheet peaks ({hw.get('source', 'no source given')}).")
    if not (best_gflops and best_gbs):
        caption += f" This profile has no measured {dtype} ceiling, so only the datasheet roof is drawn."
    if skipped:
        caption += f" Not drawn: {'; '.join(skipped)}."
    return Plot(key=f"roofline:{dtype}", title=f"Roofline, {dtype}", data_uri=to_data_uri(fig), caption=caption)


def roofline_plots(profile: Profile) -> list[Plot]:
    dtypes = list(dict.fromkeys(e.dtype for e in profile.entries))
    return [roofline_plot(profile, d) for d in dtypes]
