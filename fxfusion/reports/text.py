"""The analysis report as text: a rich table for the terminal, and markdown.  Both read the report dict."""

from __future__ import annotations

from fxfusion.planning.coverage import coverage_line
from fxfusion.reports.verification import render_markdown as verification_markdown
from fxfusion.graph.sites import ALREADY_FUSED, ILLEGAL
from fxfusion.measure.stats import AVOID, FUSE, NEUTRAL, UNDECIDED, interval_text


def _fmt_shape(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def _ci(s: dict | None) -> str:
    return interval_text(s)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _bytes_h(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


COLUMNS = ("site", "pattern", "nodes", "shape", "dtype", "legality", "verdict", "best", "speedup [95% CI]",
           "saved ms/fwd", "bytes saved")


def _noisy(site: dict) -> str:
    """' (noisy)' on a verdict its measurement's noise made neutral: its interval may then lie outside the band a
    neutral verdict has (0.80x [0.60, 0.91] under a loaded machine), and the row must not read as a decision."""
    return " (noisy)" if (site.get("decision") or {}).get("noisy") else ""


def rows(report: dict) -> list[tuple[str, ...]]:
    out = []
    for s in report["sites"]:
        out.append((s["id"], s["pattern"], str(len(s["nodes"])), _fmt_shape(s["shape"]), s["dtype"],
                    s["status"].replace("_", " "), s["verdict"].replace("_", " ") + _noisy(s), s["best_variant"] or "-",
                    _ci(s["speedup"]), _ms(s["saved_ms"]), _bytes_h(s["bytes_saved"])))
    return out


def total_line(report: dict) -> str:
    sm = report["summary"]
    fwd = sm.get("forward_ms")
    share = f" of a {fwd:.3f} ms forward pass ({sm['saved_ms_per_forward'] / fwd:.1%})" if fwd else ""
    if fwd and sm.get("forward_noisy"):
        share += f" (that forward pass's time is noisy: {sm['forward_noisy']})"
    sites = f"{sm['sites']} site{'s' * (sm['sites'] != 1)}"
    return (f"{sites}: {sm['fusible']} fusible, {sm['illegal']} illegal, {sm['already_fused']} already "
            f"fused; {sm['fuse']} worth fusing. Library estimate of the saving {sm['saved_ms_per_forward']:.4f} ms per forward"
            f"{share}, {_bytes_h(sm['bytes_saved_per_forward'])} less memory traffic.")


def _notes(report: dict) -> list[str]:
    lines = []
    for s in report["sites"]:
        if s["decision"] and s["baseline_variant"] == "eager":
            lines.append(f"{s['id']} {s['verdict']}: {s['decision']['reason']}")
        for r in s["reasons"]:
            lines.append(f"{s['id']} refused: {r}")
        for w in s["warnings"]:
            lines.append(f"{s['id']}: {w}")
    if report["metadata"].get("profile_rule"):
        lines.insert(0, f"decided from {report['metadata']['profile_rule']}")
    cap = report["capture"]
    lines += [f"graph break: {b}" for b in cap["graph_breaks"]] + [f"capture: {n}" for n in cap["notes"]]
    lines += [f"warning: {w}" for w in report["warnings"]]
    if report["unmatched"]:
        lines.append("unmatched ops: " + ", ".join(f"{k} x{v}" for k, v in report["unmatched"].items()))
    if report.get("coverage"):
        lines.append(coverage_line(report["coverage"]))
    return lines


def _decided_by(meta: dict) -> str:
    source = {"profile": f"profile {meta['profile']}", "measure": "live measurement"}.get(meta["mode"], "nothing "
                                                                                             "(match only)")
    return source + (f", {meta['regime']} regime" if meta.get("regime") else "")


# The terminal table: the markdown's columns, fitted to the width (fxfusion.reports.console.fitted_table).
# "legality" repeats what the verdict says of illegal and already-fused sites, so it goes first.
TABLE_COLUMNS = {"site": {"whole": True}, "pattern": {"whole": True}, "nodes": {"justify": "right", "drop": 5}, "shape": {"wrap": True},
                 "dtype": {"fold_constant": True}, "legality": {"drop": 6}, "verdict": {"whole": True}, "best": {"drop": 2},
                 "speedup [95% CI]": {"wrap": True, "drop": 1}, "saved ms/fwd": {"justify": "right", "drop": 3},
                 "bytes saved": {"justify": "right", "drop": 4}}

LEGEND = ("fuse / avoid: the 95% CI of the speedup over the site's baseline lies above 1.02x / below 0.98x; "
          "neutral: neither; undecided: nothing to compare it with")


def render_table(report: dict, width: int = 200):
    """A rich renderable no wider than ``width``: the sites table and its legend, then reasons, notes, unmatched ops
    and the total."""
    from rich.console import Group
    from rich.text import Text

    from fxfusion.reports.console import Column, fitted_table

    meta = report["metadata"]
    source = _decided_by(meta)
    title = (f"{meta['model']} on {meta['device']} ({meta['device_name']}), decided by {source}, "
             f"captured by {report['capture']['method']}")
    style = {FUSE: "green", NEUTRAL: "yellow", AVOID: "red", ILLEGAL: "red", ALREADY_FUSED: "dim", UNDECIDED: "dim"}
    columns = [Column(name, **TABLE_COLUMNS[name]) for name in COLUMNS]
    cells = []
    for s, row in zip(report["sites"], rows(report)):
        st = style.get(s["verdict"])
        # no space inside the interval: a narrow column wraps before it, not inside it
        cells.append([*row[:6], f"[{st}]{row[6]}[/]" if st else row[6], row[7], row[8].replace(", ", ","),
                      *row[9:]])
    table, notes = fitted_table(columns, cells, width, title)
    legend = Text(LEGEND + "." + (" " + "; ".join(notes) + "." if notes else ""), style="dim")
    parts = [table, legend] + [Text(line) for line in _notes(report)] + [Text(total_line(report), style="bold")]
    return Group(*parts)


def render_markdown(report: dict) -> str:
    meta = report["metadata"]
    lines = [f"# fxfusion analysis: {meta['model']}", "",
             f"Device {meta['device']} ({meta['device_name']}), torch {meta['torch_version']}, "
             f"decided by {_decided_by(meta)}, "
             f"captured by {report['capture']['method']} ({report['capture']['graphs']} graph(s), "
             f"{report['capture']['nodes']} ops).", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows(report)]
    lines += ["", total_line(report), ""]
    lines += [f"- {line}" for line in _notes(report)]
    if report.get("verification"):
        lines += [""] + verification_markdown(report["verification"])
    return "\n".join(lines) + "\n"


# -- fxfusion compare in the terminal ---------------------------------------------------------------------------------

# Whole names and verdicts always; the intervals go first when the width is short, then eager A/B, then best.
COMPARISON_COLUMNS = (("pattern", {"whole": True}), ("shape", {"wrap": True}), ("dtype", {"fold_constant": True}),
                      ("verdict A->B", {"wrap": True}), ("best A->B", {"wrap": True, "drop": 2}),
                      ("A speedup [95% CI]", {"wrap": True, "drop": 4}),
                      ("B speedup [95% CI]", {"wrap": True, "drop": 4}),
                      ("speedup B/A", {"justify": "right"}), ("eager A/B", {"justify": "right", "drop": 3}))
# Entries found in one profile only: this many are named in the terminal, the rest counted.
UNMATCHED_SHOWN = 5


def _arrow(a, b) -> str:
    return str(a) if a == b else f"{a} -> {b}"


def render_comparison(comparison, width: int = 200):
    """``fxfusion compare``'s terminal output, no wider than ``width``: the summary, the flips, the decision
    boundaries and every matched pair as tables that keep pattern names and verdicts whole, and the entries found
    in one profile only counted (with a few named; markdown and JSON list them all)."""
    from rich.console import Group
    from rich.text import Text

    from fxfusion.reports.console import Column, fitted_table

    columns = [Column(name, **kw) for name, kw in COMPARISON_COLUMNS]

    def pair_rows(pairs):
        return [[p.pattern, _fmt_shape(p.shape), p.dtype, _arrow(p.a.verdict, p.b.verdict),
                 _arrow(p.a.best_variant, p.b.best_variant), interval_text(p.a.speedup, sep=","),
                 interval_text(p.b.speedup, sep=","), _ratio(p.speedup_ratio), _ratio(p.eager_time_ratio)]
                for p in pairs]

    def with_notes(title, cols, cells):
        table, notes = fitted_table(cols, cells, width, title)
        return [table] + ([Text("; ".join(notes) + ".", style="dim")] if notes else [])

    c = comparison
    parts = [Text(f"A: {c.a_label}\nB: {c.b_label}\n{c.summary_line()}")]
    if c.flips:
        parts += with_notes("Flips", columns, pair_rows(c.flips))
    if c.boundaries:
        bcols = [Column("pattern", whole=True), Column("dtype", fold_constant=True), Column("profile"),
                 Column("verdict", wrap=True), Column("between", wrap=True), Column("and", wrap=True)]
        parts += with_notes("Decision boundaries", bcols,
                            [[b.pattern, b.dtype, b.profile.upper(), _arrow(b.below_verdict, b.above_verdict),
                              f"{_fmt_shape(b.below_shape)} ({b.below_flops:.3g} FLOPs)",
                              f"{_fmt_shape(b.above_shape)} ({b.above_flops:.3g} FLOPs)"] for b in c.boundaries])
    if c.pairs:
        parts += with_notes("All entries in both", columns, pair_rows(c.pairs))
    for name, keys in (("A", c.only_in_a), ("B", c.only_in_b)):
        if keys:
            more = len(keys) - UNMATCHED_SHOWN
            parts.append(Text(f"only in {name}: {len(keys)} entr{'y' if len(keys) == 1 else 'ies'}: "
                              + ", ".join(keys[:UNMATCHED_SHOWN])
                              + (f" and {more} more (--format markdown or json lists them all)" if more > 0 else "")))
    parts += [Text(f"note: {n}") for n in c.notes]
    return Group(*parts)


def _ratio(r: float | None) -> str:
    return f"{r:.3g}" if r is not None else "-"
