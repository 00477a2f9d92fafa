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
from typing import Any, Callable, Iterable

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


# Twenty patterns in twenty tab20 colours cannot be told apart on a roofline.  Instead: one hue per family (the
# grouping that explains where points fall), patterns of a family as shades of it, and the marker for the variant
# kind (KIND_MARKERS).
FAMILY_COLORMAPS = {"linear": "Blues", "conv": "Oranges", "attention": "Greens", "norm": "Purples"}
OTHER_COLORMAPS = ("Reds", "Greys", "YlOrBr", "PuRd")


def family_colors(pattern_families: dict[str, str]) -> dict[str, Any]:
    """pattern -> colour: a hue per family, shades from mid to dark for the patterns of a family, in order."""
    from matplotlib import colormaps

    families = list(dict.fromkeys(pattern_families.values()))
    extra = iter(OTHER_COLORMAPS * (1 + len(families)))
    cmaps = {f: colormaps[FAMILY_COLORMAPS.get(f) or next(extra)] for f in families}
    out = {}
    for family in families:
        members = [p for p, f in pattern_families.items() if f == family]
        for i, pattern in enumerate(members):
            out[pattern] = cmaps[family](0.45 + 0.5 * (i / max(1, len(members) - 1)) if len(members) > 1 else 0.7)
    return out


# Speedup plots: the variant kind also sets the line style, so two variants of one colour family stay apart.
KIND_LINESTYLES = {"manual": "-", "compile": "--"}


def _speedup_axis(ax) -> None:
    """A log y axis labelled in plain multiples (0.5x, 1x, 2x): a 100x interval no longer flattens the others.
    matplotlib's LogFormatter decides which ticks to label (minor ones too when the range is under a few decades);
    this one only writes them as multiples."""
    from matplotlib.ticker import LogFormatter

    class Multiples(LogFormatter):
        def __call__(self, x, pos=None):
            return f"{x:g}x" if super().__call__(x, pos) else ""

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(Multiples(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.yaxis.set_minor_formatter(Multiples(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _shape_text(shape: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in shape.items())


# -- speedup against problem size ------------------------------------------------------------------------------------

def speedup_plot(entries: list[Entry], min_effect: float) -> Plot:
    """Speedup over eager of each fused variant against FLOPs, for entries of one pattern and one dtype."""
    entries = sorted(entries, key=lambda e: (e.flops, tuple(e.shape.values())))
    pattern, dtype = entries[0].pattern, entries[0].dtype
    names = list(dict.fromkeys(v.name for e in entries for v in e.variants if v.kind != "eager"))
    kinds = {v.name: v.kind for e in entries for v in e.variants}
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
        ax.errorbar(xs, med, yerr=err, color=color, marker=KIND_MARKERS.get(kinds[name], "o"), ms=5, lw=1.5,
                    ls=KIND_LINESTYLES.get(kinds[name], "-"), capsize=3, label=f"{name} ({kinds[name]})")
    ax.set_xscale("log")
    _speedup_axis(ax)
    ax.set_xlabel("problem size (FLOPs per call, log scale)")
    ax.set_ylabel("speedup over eager (x, log scale)")
    ax.set_title(f"{entries[0].title}, {dtype}: speedup over eager")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    sizes = "; ".join(f"{_shape_text(e.shape)} = {e.flops:.3g} FLOPs ({e.decision.verdict}"
                      f"{', noisy' if e.decision.noisy else ''})" for e in entries)
    caption = (f"Median speedup over eager per fused variant (log scale; solid: manual fusion, dashed: "
               f"torch.compile), 95% bootstrap interval as band and error bar, grey strip: neutral zone. "
               f"Sizes: {sizes}.")
    if left_out:
        caption += f" Not drawn: {'; '.join(left_out)}."
    return Plot(key=f"speedup:{pattern}:{dtype}", title=f"{entries[0].title} ({pattern}), {dtype}",
                data_uri=to_data_uri(fig), caption=caption)


def _speedup_groups(profile: Profile) -> list[list[Entry]]:
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in profile.entries:
        groups.setdefault((e.pattern, e.dtype), []).append(e)
    return list(groups.values())


def plot_count(profile: Profile) -> int:
    """How many plots a profile report draws (one per pattern and dtype, one roofline per dtype): for progress."""
    return len(_speedup_groups(profile)) + len({e.dtype for e in profile.entries})


def speedup_plots(profile: Profile, on_plot: Callable[[str], None] | None = None) -> list[Plot]:
    """One speedup plot per (pattern, dtype), in the order the profile first lists them; ``on_plot(what)`` is
    called before each is drawn."""
    min_effect = float(profile.metadata.get("timing", {}).get("min_effect", 0.02))
    out = []
    for group in _speedup_groups(profile):
        if on_plot:
            on_plot(f"speedup plot {group[0].pattern} {group[0].dtype}")
        out.append(speedup_plot(group, min_effect))
    return out


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
            points.append({"pattern": e.pattern, "family": e.family, "kind": v.kind, "ai": e.flops / nbytes,
                           "gflops": v.gflops})
    return points, skipped


LEGEND_ROWS = 26


def roofline_plot(profile: Profile, dtype: str) -> Plot:
    """Every measured variant of one dtype against the measured ceilings and the datasheet peaks."""
    entries = [e for e in profile.entries if e.dtype == dtype]
    points, skipped = _points(entries)
    ceilings, hw = profile.ceilings, profile.hardware
    best_gbs = ceilings.get("best_gbs") or None
    best_gflops = (ceilings.get("best_gflops") or {}).get(dtype)
    peak_gflops = hw["peak_gflops"].get(dtype) or hw["peak_gflops"].get("float32")
    peak_gbs = hw["peak_bandwidth_gbs"]

    tf32_note = _tf32_note(profile, dtype, points)
    tf32_peak = hw["peak_gflops"].get("tf32") if tf32_note else None
    ais = [p["ai"] for p in points] or [1.0]
    ridges = [g / b for g, b in ((best_gflops, best_gbs), (peak_gflops, peak_gbs), (tf32_peak, peak_gbs)) if g and b]
    lo, hi = min(ais + ridges) / 4, max(ais + ridges) * 4
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]

    families = {p["pattern"]: p["family"] for p in sorted(points, key=lambda p: p["family"])}
    colors = family_colors(families)
    # the legend beside the axes, one line per pattern and marker kind: in columns of at most LEGEND_ROWS, the figure
    # tall enough for them (one column of 41 patterns collapsed the axes of the H200 profile's plot to nothing)
    lines = len(colors) + len({p["kind"] for p in points}) + 3
    ncol = -(-lines // LEGEND_ROWS)
    fig = _new_figure((8.5 + 2.6 * (ncol - 1), max(4.6, 0.16 * -(-lines // ncol) + 1.0)))
    ax = fig.add_subplot()
    if peak_gflops and peak_gbs:
        ax.plot(grid, [min(peak_gflops, peak_gbs * x) for x in grid], color="0.5", ls="--", lw=1,
                label=f"datasheet: {peak_gflops:.4g} GFLOP/s, {peak_gbs:.4g} GB/s")
    if tf32_peak and peak_gbs:
        ax.plot(grid, [min(tf32_peak, peak_gbs * x) for x in grid], color="0.5", ls=":", lw=1.2,
                label=f"datasheet TF32 (on in this run): {tf32_peak:.4g} GFLOP/s")
    if best_gflops and best_gbs:
        ax.plot(grid, [min(best_gflops, best_gbs * x) for x in grid], color="black", lw=1.8,
                label=f"measured: {best_gflops:.4g} GFLOP/s (matmul), {best_gbs:.4g} GB/s (copy)")
    for pattern, color in colors.items():
        label = f"{families[pattern]}: {pattern}"  # one legend line per pattern (colour); markers: variant kind
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
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=ncol)
    caption = (f"{len(points)} measured variants of {len(entries)} {dtype} entries. Eager moves the unfused bytes, "
               f"fused variants the fused bytes (the profile's byte model). Solid: measured ceilings; dashed: "
               f"datasheet peaks ({hw.get('source', 'no source given')}).")
    if not (best_gflops and best_gbs):
        caption += f" This profile has no measured {dtype} ceiling, so only the datasheet roof is drawn."
    caption += tf32_note
    if skipped:
        caption += f" Not drawn: {'; '.join(skipped)}."
    return Plot(key=f"roofline:{dtype}", title=f"Roofline, {dtype}", data_uri=to_data_uri(fig), caption=caption)


def _tf32_note(profile: Profile, dtype: str, points: list[dict[str, Any]]) -> str:
    """Why float32 points can stand above the float32 roofs: with TF32 on, cuDNN (or cuBLAS) ran them on TF32
    tensor cores, while both roofs are plain float32 (the ceiling's matmul ran with ``metadata.tf32.matmul``)."""
    meta = profile.metadata
    tf32 = meta.get("tf32") or {}
    if dtype != "float32" or not str(meta.get("device", "")).startswith("cuda"):
        return ""
    on = [(family, flag) for family, flag in (("conv", "cudnn"), ("linear", "matmul"), ("attention", "matmul"))
          if tf32.get(flag) and any(p["family"] == family for p in points)]
    if not on:
        return ""
    libraries = {"cudnn": "cuDNN", "matmul": "cuBLAS matmuls"}
    flags = sorted({flag for _, flag in on})
    tf32_peak = profile.hardware.get("peak_gflops", {}).get("tf32")
    return (f" TF32 was on for {' and '.join(libraries[f] for f in flags)} "
            f"({', '.join(f'metadata.tf32.{f} = true' for f in flags)}): the float32 "
            f"{', '.join(dict.fromkeys(f for f, _ in on))} points ran on TF32 tensor cores, so they can stand above "
            f"the float32 roofs (solid, dashed: float32 without TF32"
            + (f"; dotted: the datasheet TF32 peak, {tf32_peak:.4g} GFLOP/s" if tf32_peak else "") + ").")


def roofline_plots(profile: Profile, on_plot: Callable[[str], None] | None = None) -> list[Plot]:
    out = []
    for dtype in dict.fromkeys(e.dtype for e in profile.entries):
        if on_plot:
            on_plot(f"roofline {dtype}")
        out.append(roofline_plot(profile, dtype))
    return out
