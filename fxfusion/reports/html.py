"""HTML reports: a profile (plots, roofline, decision table) or an analysis (a model's fusion sites) as one file.

Every report is a single self-contained HTML page: inline CSS, plots as PNG data URIs (:mod:`fxfusion.reports.plots`), no
scripts, nothing fetched.  Every string from a profile or analysis is HTML-escaped.  Elements carry ``data-plot``,
``data-key`` and ``data-site`` attributes so tests (and scripts) can find each plot, entry and site.  The functions
here only render; writing goes through :func:`fxfusion.profiles.schema.atomic_write_text` in the CLI.
"""

from __future__ import annotations

import json
from collections import Counter
from html import escape
from typing import Any, Callable, Iterable, Sequence

from fxfusion import __version__
from fxfusion.reports.plots import Plot, plot_count, require_matplotlib, roofline_plots, speedup_plots
from fxfusion.measure.hardware import nominal_peaks
from fxfusion.profiles.profile import Entry, Profile
from fxfusion.planning.coverage import coverage_line
from fxfusion.reports.dynamic import dynamic_html
from fxfusion.reports.verification import (CANDIDATE_COLUMNS, GROUP_COLUMNS, candidate_choice_line, candidate_rows,
                                           choice_lines, end_to_end_rows, group_rows, prediction_lines)

VERDICT_COLORS = {"fuse": "#c9f0d3", "neutral": "#fff0b3", "avoid": "#f8cccc", "illegal": "#e2d5f0",
                  "already_fused": "#cfe3fa", "undecided": "#e6e6e6"}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1600px;padding:0 1.5em;
color:#222;line-height:1.4}
p,ul,dl,figcaption{max-width:62em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ccc}
.wide{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.why td{border-top:none;color:#444;font-size:.95em;padding-bottom:6px}
tr.main:has(+ tr.why) td{border-bottom:none}
figure{margin:1em 0 2em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#444}.meta{color:#555}.warn{color:#8a4b00}code{font-size:.9em}
.verdict{padding:1px 6px;border-radius:3px;white-space:nowrap}.ci{white-space:nowrap}
.chip{display:inline-block;margin:1px;padding:0 4px;border-radius:3px;font-family:monospace;font-size:.85em}
nav a{margin-right:1em}
""" + "".join(f".v-{name}{{background:{color}}}" for name, color in VERDICT_COLORS.items())


# -- small HTML helpers ----------------------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _verdict(v: str | None) -> str:
    return f'<span class="verdict v-{_e(v or "undecided")}">{_e(v or "undecided")}</span>'


def _num(value: float | None, fmt: str = ".3g", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def _ci(s) -> str:
    """``1.56x [1.45, 1.75]``, kept on one line (the interval is never split from its median)."""
    if s is None:
        return "-"
    if isinstance(s, dict):
        return f"<span class=\"ci\">{s['median']:.2f}x [{s['ci_low']:.2f}, {s['ci_high']:.2f}]</span>"
    return f"<span class=\"ci\">{s.median:.2f}x [{s.ci_low:.2f}, {s.ci_high:.2f}]</span>"


def _shape(shape: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (shape or {}).items()) or "-"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "",
           row_attrs: Iterable[str] | None = None, numeric: Sequence[int] = (),
           why: Iterable[tuple[str, str]] | None = None) -> str:
    """Cells are HTML already (callers escape); ``row_attrs`` gives each <tr> its attributes.

    ``why``: per row, (attributes, HTML) of a second row spanning every column, under it: long prose (a decision's
    reason, a site's notes) gets the table's whole width instead of a squeezed last column.  The table sits in a
    box that scrolls sideways rather than running off the page."""
    attrs = iter(row_attrs) if row_attrs is not None else None
    whys = iter(why) if why is not None else None
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        main = ' class="main"' if whys else ""  # (a row with nothing under it keeps its bottom border: CSS below)
        body.append(f"<tr{main} {next(attrs) if attrs else ''}>{cells}</tr>")
        if whys:
            why_attrs, text = next(whys)
            if text:  # nothing to say: no second row
                body.append(f'<tr class="why" {why_attrs}><td colspan="{len(headers)}">{text}</td></tr>')
    return (f'<div class="wide"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            f"</table></div>")


def _dl(items: Iterable[tuple[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items if v not in (None, "")) + "</dl>"


def _list(items: Iterable[str], cls: str = "") -> str:
    items = list(items)
    return f'<ul class="{cls}">' + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>" if items else ""


def _figure(plot: Plot) -> str:
    return (f'<figure data-plot="{_e(plot.key)}"><img src="{plot.data_uri}" alt="{_e(plot.title)}">'
            f"<figcaption>{_e(plot.caption)}</figcaption></figure>")


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_e(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n"
            f'<footer class="meta"><p>Generated by fxfusion {_e(__version__)}.</p></footer>\n</body>\n</html>\n')


# -- profile report --------------------------------------------------------------------------------------------------

def _decision_row(e: Entry, roofline: bool = True) -> list[str]:
    d = e.decision
    eager, best = e.variant("eager"), e.variant(d.best_variant)
    kernels = "-"
    if eager and eager.kernels_per_call is not None:
        kernels = f"{eager.kernels_per_call:g}"
        if best and best is not eager and best.kernels_per_call is not None:
            kernels += f" &rarr; {best.kernels_per_call:g}"
    row = [_e(e.pattern), _e(_shape(e.shape)), _e(e.dtype), f"{e.flops:.3g}", _verdict(d.display_verdict),
           _e(d.best_variant), _ci(d.speedup), _num(eager.median_ms if eager else None, ".4g"),
           _num(best.median_ms if best else None, ".4g"), kernels, f"{e.memory_reduction:.0%}"]
    return row + [_num(best.pct_of_roofline if best else None, ".1f", "%")] if roofline else row


def _decision_why(e: Entry) -> str:
    refused = "; ".join(f"{v.name}: {v.status}" for v in e.variants if v.status != "ok")
    return (f"<b>why:</b> {_e(e.decision.reason)}" + (f" &middot; <b>not timed:</b> {_e(refused)}" if refused else "")
            + (f" &middot; <b>verdict per regime:</b> {_regimes_cell(e)}" if len(e.regimes()) > 1 or
               any(e.decision_for(r).noisy for r in e.regimes()) else ""))


def _regimes_cell(e: Entry) -> str:
    """The pipelined verdict beside the isolated one, and a flag on a noisy verdict."""
    cells = []
    for regime in e.regimes():
        d = e.decision_for(regime)
        cells.append(f"{_e(regime)}: {_verdict(d.verdict)}" + (' <b class="warn">noisy</b>' if d.noisy else ""))
    return ", ".join(cells)


DECISION_HEADERS = ("pattern", "shape", "dtype", "FLOPs", "verdict", "best variant", "speedup [95% CI]", "eager ms",
                    "best ms", "kernels/call (eager \u2192 best)", "bytes saved", "best % of roofline")


def decision_table(profile: Profile) -> str:
    """One row per entry, and under it a full-width row with the reason and the variants that were not timed.
    Against nominal peaks (``generic-cpu``) a percentage of the roofline means nothing: that column is left out."""
    roofline = not nominal_peaks(profile.hardware.get("source", ""))
    headers = DECISION_HEADERS if roofline else DECISION_HEADERS[:-1]
    return _table(headers, (_decision_row(e, roofline) for e in profile.entries), cls="decisions",
                  row_attrs=(f'data-key="{_e(e.key())}" data-verdict="{_e(e.decision.display_verdict)}"'
                             + (f' data-noisy="{_e(_noisy_regimes(e))}"' if _noisy_regimes(e) else "")
                             for e in profile.entries), numeric=(3, 7, 8, 10, 11),
                  why=((f'data-why="{_e(e.key())}"', _decision_why(e)) for e in profile.entries))


def _noisy_regimes(e: Entry) -> str:
    return ",".join(r for r in e.regimes() if e.decision_for(r).noisy)


def _ceilings_html(profile: Profile) -> str:
    hw, c = profile.hardware, profile.ceilings
    peaks = _table(("dtype", "datasheet GFLOP/s", "measured best GFLOP/s"),
                   ([_e(d), _num(g, ".4g"), _num((c.get("best_gflops") or {}).get(d), ".4g")]
                    for d, g in hw["peak_gflops"].items()), numeric=(1, 2))
    bw = (f"<p>Memory bandwidth: datasheet {hw['peak_bandwidth_gbs']:.4g} GB/s, measured best copy "
          f"{_num(c.get('best_gbs'), '.4g')} GB/s. Source of the datasheet figures: {_e(hw.get('source'))}.</p>")
    matmul = _table(("matmul n", "dtype", "median ms", "GFLOP/s", "of datasheet"),
                    ([str(m["n"]), _e(m["dtype"]), _num(m["median_ms"], ".4g"), _num(m["gflops"], ".4g"),
                      _num(100 * m["efficiency"], ".0f", "%")] for m in c.get("matmul", [])), numeric=(0, 2, 3, 4))
    copy = _table(("copy bytes", "median ms", "GB/s (read+write)", "of datasheet"),
                  ([f"{b['bytes']:,}", _num(b["median_ms"], ".4g"), _num(b["gbs"], ".4g"),
                    _num(100 * b["efficiency"], ".0f", "%")] for b in c.get("bandwidth", [])), numeric=(0, 1, 2, 3))
    return peaks + bw + (matmul if c.get("matmul") else "") + (copy if c.get("bandwidth") else "")


def render_profile_html(profile: Profile, source: str | None = None,
                        on_plot: Callable[[int, int, str], None] | None = None) -> str:
    """The whole profile report; ``source`` (the file it came from) is shown in the header.  Drawing the plots is
    most of the time (seconds per plot on a CPU): ``on_plot(done, total, what)`` is called before each."""
    require_matplotlib()
    meta = profile.metadata
    counts = Counter(e.decision.display_verdict for e in profile.entries)
    total, drawn = plot_count(profile), []

    def next_plot(what: str) -> None:
        if on_plot:
            on_plot(len(drawn), total, what)
        drawn.append(what)

    speedups, rooflines = speedup_plots(profile, next_plot), roofline_plots(profile, next_plot)
    timing = meta.get("timing", {})
    parts = [
        f"<h1>fxfusion profile: {_e(meta.get('hardware'))}</h1>",
        f'<p class="meta">{_e(meta.get("device_name"))} ({_e(meta.get("device"))}), {_e(meta.get("threads"))} '
        f'threads, torch {_e(meta.get("torch_version"))}, measured {_e(meta.get("date"))}'
        + (f", from <code>{_e(source)}</code>" if source else "") + "</p>",
        '<nav><a href="#speedup">speedup plots</a><a href="#roofline">roofline</a>'
        '<a href="#decisions">decision table</a><a href="#run">run details</a></nav>',
        f"<p>{len(profile.entries)} entries: " + ", ".join(f"{counts.get(v, 0)} {_verdict(v)}"
                                                        for v in ("fuse", "neutral", "avoid")) + ".</p>",
        _list((f"warning: {w}" for w in meta.get("warnings", [])), "warn"),
        '<section id="speedup"><h2>Speedup over eager against problem size</h2>',
        f"<p>A variant is <b>fuse</b> only when its whole 95% interval is above "
        f"{1 + timing.get('min_effect', 0.02):.2f}x, <b>avoid</b> when wholly below "
        f"{1 - timing.get('min_effect', 0.02):.2f}x; anything touching the grey neutral zone is <b>neutral</b>.</p>",
        "".join(_figure(p) for p in speedups) or "<p>No entries.</p>", "</section>",
        '<section id="roofline"><h2>Roofline</h2>', _ceilings_html(profile),
        "".join(_figure(p) for p in rooflines), "</section>",
        '<section id="decisions"><h2>Decisions</h2>',
        "" if not nominal_peaks(profile.hardware.get("source", "")) else
        f"<p>No &ldquo;% of roofline&rdquo; column: the {_e(profile.hardware.get('name'))} peaks are nominal "
        f"({_e(profile.hardware.get('source'))}).</p>",
        decision_table(profile), "</section>",
        '<section id="run"><h2>Run details</h2>',
        _dl([("command", meta.get("command")), ("timing", timing.get("method")), ("rounds", timing.get("rounds")),
             ("confidence", timing.get("confidence")), ("min effect", timing.get("min_effect")),
             ("size set", timing.get("size_set")), ("quick", meta.get("quick")),
             ("tf32", ", ".join(f"{k}={v}" for k, v in (meta.get("tf32") or {}).items())),
             ("triton", meta.get("triton_version")), ("python", meta.get("python_version")),
             ("fxfusion", meta.get("fxfusion_version")), ("host", meta.get("host"))]),
        "</section>",
    ]
    return _page(f"fxfusion profile: {meta.get('hardware')}", "\n".join(p for p in parts if p))


# -- analysis report -------------------------------------------------------------------------------------------------

def _site_row(s: dict) -> list[str]:
    where = " / ".join(x for x in (s.get("written_as"), s.get("source")) if x)
    return [_e(s.get("id")), _e(s.get("title") or s.get("pattern")), _verdict(s.get("verdict")),
            " ".join(f'<span class="chip v-{_e(s.get("verdict") or "undecided")}">{_e(n)}</span>'
                     for n in s.get("nodes", [])),
            _e(_shape(s.get("shape"))), _e(s.get("dtype")), _e(where or "-"),
            _e(f"{s.get('best_variant') or '-'} vs {s.get('baseline_variant') or '-'}"), _ci(s.get("speedup")),
            _num(s.get("baseline_ms"), ".4g"), _num(s.get("best_ms"), ".4g"), _num(s.get("saved_ms"), ".4g"),
            _num(s.get("bytes_saved"), ",")]


def _site_why(s: dict) -> str:
    """The site's notes (why it was refused, the decision's reason, warnings), for the row under it."""
    notes = list(s.get("reasons") or []) + list(s.get("warnings") or [])
    decision = s.get("decision") or {}
    if decision.get("reason"):
        notes.append(f"decision: {decision['reason']}")
    return "<b>why:</b> " + _e("; ".join(notes)) if notes else ""


# The status (fusible, illegal, already fused) is not a column: the verdict says it for the sites that are not fusible.
SITE_HEADERS = ("site", "pattern", "verdict", "nodes", "shape", "dtype", "written as / source",
                "best vs baseline", "speedup [95% CI]", "baseline ms", "best ms", "saved ms", "bytes saved")


def _target_name(target: Any) -> str:
    """``aten.addmm.default`` for an aten op overload (as the analysis's unmatched counts spell it), else its name."""
    if type(target).__module__.startswith("torch._ops"):
        return str(target)
    return getattr(target, "__name__", str(target))


def _graph_ops(graphs: Sequence[Any], sites: list[dict]) -> str:
    """Every compute node of each captured graph, in order; nodes of a site coloured by the site's verdict."""
    out = []
    for gi, gm in enumerate(graphs):
        owner = {n: s for s in sites if s.get("graph_index") == gi for n in s.get("nodes", [])}
        rows, attrs = [], []
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            site = owner.get(node.name)
            verdict = (site.get("verdict") or "undecided") if site else None
            name = f'<span class="chip v-{_e(verdict)}">{_e(node.name)}</span>' if site else _e(node.name)
            rows.append([name, f"<code>{_e(_target_name(node.target))}</code>",
                         _e(site.get("id")) if site else "", _verdict(verdict) if site else ""])
            attrs.append(f'data-node="{_e(node.name)}"' + (f' data-site="{_e(site.get("id"))}"' if site else ""))
        out.append(f"<h3>graph {gi}</h3>" + _table(("node", "op", "site", "verdict"), rows, cls="ops",
                                                    row_attrs=attrs))
    return "".join(out)


def _site_nodes(sites: list[dict]) -> str:
    """Without the graphs: each graph's site nodes, coloured by verdict (the analysis file lists no other nodes)."""
    out = []
    for gi in sorted({s.get("graph_index", 0) for s in sites}):
        chips = "".join(
            f'<span class="chip v-{_e(s.get("verdict") or "undecided")}" data-site="{_e(s.get("id"))}" '
            f'title="{_e(s.get("id"))}: {_e(s.get("pattern"))}, {_e(s.get("verdict"))}">{_e(n)}</span>'
            for s in sites if s.get("graph_index", 0) == gi for n in s.get("nodes", []))
        out.append(f"<h3>graph {gi}</h3><p>{chips}</p>")
    return "".join(out)


def _decided_by(meta: dict) -> str:
    mode = meta.get("mode")
    regime = f", {_e(meta['regime'])} regime" if meta.get("regime") else ""
    rule = f" ({_e(meta['profile_rule'])})" if meta.get("profile_rule") else ""
    if mode == "profile":
        return (f'decisions from profile <code>{_e(meta.get("profile"))}</code> ({_e(meta.get("hardware"))})'
                f"{regime}{rule}")
    if mode == "measure":
        return f"decisions measured live ({_e(meta.get('hardware'))}){regime}{rule}"
    return "matched only: no decisions" if mode == "match_only" else f"mode {_e(mode)}"


def _verification_html(v: dict) -> str:
    """The verification of ``analyze --apply``: verdict, end-to-end times, predicted vs measured, the groups."""
    rows = [[_e(label), median, _e(ci), (_verdict(verdict) if verdict else "") if ran else _e(verdict)]
            for label, median, ci, verdict, ran in end_to_end_rows(v)]
    lines = prediction_lines(v)
    groups = [[_e(cell) for cell in row] for row in group_rows(v)]
    timing = v.get("timing") or ""
    return "".join([
        '<section id="verification"><h2>Verification</h2>',
        f'<p class="{"ok" if v.get("ok") else "warn"}"><b>{"VERIFIED" if v.get("ok") else "NOT VERIFIED"}</b>: '
        f'{_e(v.get("reason"))}</p>',
        f"<p>End to end on {_e(v.get('device'))}"
        f"{_e(', ' + timing + ' timing') if timing not in ('', 'cpu') else ''}:</p>",
        _table(("model", "median ms", "speedup over the original [95% CI]", "verdict"), rows, cls="e2e",
               numeric=(1,)),
        (f"<p>Candidates, {_e(candidate_choice_line(v))}:</p>"
         + _table(CANDIDATE_COLUMNS, [[_e(c) for c in row] for row in candidate_rows(v)], cls="candidates",
                  numeric=(1, 4, 5)) + _list(choice_lines(v))) if candidate_rows(v) else "",
        _list(lines),
        _table(GROUP_COLUMNS, groups, cls="groups", numeric=(3, 4)) if groups else "",
        _list((f"warning: {w}" for w in v.get("warnings") or []), "warn"),
        dynamic_html(v["dynamic"]) if v.get("dynamic") else "",
        "<details><summary>the verification as JSON</summary><pre>" + _e(json.dumps(v, indent=1)) + "</pre></details>",
        "</section>"])


def _saving_summary(summary: dict, verified: bool) -> str:
    """The per-site estimate, labelled as such: with a verification the page has other predictions too."""
    if "saved_ms_per_forward" not in summary:
        return ""
    forward = (f"; measured forward pass: {summary['forward_ms']:.4g} ms" + (f" (noisy: {summary['forward_noisy']})"
               if summary.get("forward_noisy") else "")) if summary.get("forward_ms") else ""
    other = (" The <a href=\"#verification\">verification</a> below has the <b>in-model prediction</b> (each "
             "fusion group timed inside the model, which is what <code>--apply</code> acts on) and the "
             "<b>measured</b> saving of the applied plan." if verified else "")
    return (f"<p><b>Library estimate</b> of the saving per forward pass: {summary['saved_ms_per_forward']:.4g} ms, "
            f"{summary.get('bytes_saved_per_forward', 0):,} bytes (each site's baseline minus best time from the "
            f"pattern library, summed over the sites whose verdict is fuse){forward}.{other}</p>")


def render_analysis_html(analysis: dict, graphs: Sequence[Any] | None = None) -> str:
    """An analysis report (schemas/analysis.schema.json) as HTML; optional fields may be absent.

    ``graphs``: the captured ``torch.fx.GraphModule`` s, when the caller still has them; then every compute node is
    listed in order with the nodes of each site highlighted.  Without them only the site nodes can be shown.
    """
    meta, capture = analysis.get("metadata", {}), analysis.get("capture", {})
    summary, sites = analysis.get("summary", {}), analysis.get("sites", [])
    unmatched = sorted((analysis.get("unmatched") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    legend = " ".join(_verdict(v) for v in VERDICT_COLORS)
    numbers = [(k.replace("_", " "), summary[k]) for k in
               ("sites", "fusible", "illegal", "already_fused", "fuse", "neutral", "avoid", "undecided",
                "matched_nodes", "unmatched_nodes") if k in summary]
    parts = [
        f"<h1>fxfusion analysis: {_e(meta.get('model'))}</h1>",
        f'<p class="meta">{_e(meta.get("entry"))} on {_e(meta.get("device_name"))} ({_e(meta.get("device"))}), '
        f'dtype {_e(meta.get("dtype") or "as loaded")}, {_decided_by(meta)}, {_e(meta.get("date"))}</p>',
        '<nav><a href="#sites">sites</a><a href="#graph">fusion sites in the graph</a>'
        '<a href="#unmatched">unmatched ops</a><a href="#run">run details</a>'
        + ('<a href="#verification">verification</a>' if analysis.get("verification") else "") + "</nav>",
        "<p>" + ", ".join(f"{_e(v)} {_e(k)}" for k, v in numbers) + ".</p>" if numbers else "",
        _saving_summary(summary, analysis.get("verification") is not None),
        _list((f"warning: {w}" for w in analysis.get("warnings", [])), "warn"),
        '<section id="sites"><h2>Fusion sites</h2>',
        _table(SITE_HEADERS, (_site_row(s) for s in sites), cls="sites",
               row_attrs=(f'data-site="{_e(s.get("id"))}" data-verdict="{_e(s.get("verdict"))}"' for s in sites),
               numeric=(9, 10, 11, 12), why=((f'data-why="{_e(s.get("id"))}"', _site_why(s)) for s in sites))
        if sites else "<p>No fusible pattern was found in this model.</p>",
        "</section>",
        f'<section id="graph"><h2>Fusion sites in the graph</h2><p>Colours: {legend}</p>',
        _graph_ops(graphs, sites) if graphs is not None else _site_nodes(sites), "</section>",
        (f"<p>{_e(coverage_line(analysis['coverage']))}</p>" if analysis.get('coverage') else ''),
        '<section id="unmatched"><h2>Compute ops in no site</h2>',
        _table(("op", "nodes"), ([f"<code>{_e(op)}</code>", str(n)] for op, n in unmatched), cls="unmatched",
               numeric=(1,)) if unmatched else "<p>Every compute node is part of a site.</p>",
        "</section>",
        '<section id="run"><h2>Run details</h2>',
        _dl([("capture", capture.get("method")), ("graphs", capture.get("graphs")),
             ("compute nodes", capture.get("nodes")), ("capture seconds", capture.get("seconds")),
             ("command", meta.get("command")), ("torch", meta.get("torch_version")),
             ("fxfusion", meta.get("fxfusion_version")), ("threads", meta.get("threads")), ("host", meta.get("host"))]),
        ("<h3>Graph breaks</h3>" + _list(capture["graph_breaks"])) if capture.get("graph_breaks") else "",
        ("<h3>Notes</h3>" + _list(capture["notes"])) if capture.get("notes") else "",
        "</section>",
        _verification_html(analysis["verification"]) if analysis.get("verification") else "",
    ]
    return _page(f"fxfusion analysis: {meta.get('model')}", "\n".join(p for p in parts if p))
