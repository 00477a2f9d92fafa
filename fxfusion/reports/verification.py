"""How a verification is told: the terminal (rich), markdown and HTML renderers all read these rows and lines."""

from __future__ import annotations

from typing import Any

from fxfusion.measure.stats import interval_text
from fxfusion.planning.prediction import HOST_MOVED
from fxfusion.planning.verify import VerificationResult


def _fmt_ci(sp: dict | None) -> str:
    return interval_text(sp)


def render_verification(r: VerificationResult):
    """A rich renderable: the verdict, the output checks, the end-to-end times, predicted vs measured."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text.from_markup(("[bold green]VERIFIED[/]" if r.ok else "[bold red]NOT VERIFIED[/]") + f": {r.reason}")
    regime = f", {r.timing} timing" if r.timing and r.timing != "cpu" else ""
    times = Table(title=f"end to end on {r.device}{regime} (median, 95% CI of speedup over the original)")
    for col in ("model", "median ms", "IQR ms", "speedup [95% CI]", "verdict", "first call s"):
        times.add_column(col, justify="left" if col in ("model", "verdict") else "right")
    for name, label in MODEL_LABELS.items():
        t = r.timings.get(name)
        if t is None:
            continue
        if t.status != "ok" or t.median_ms is None:
            times.add_row(label, "-", "-", "-", f"{t.status}: {t.reason or ''}"[:60], "-")
            continue
        times.add_row(label, f"{t.median_ms:.3f}", f"{t.iqr_ms:.3f}", _fmt_ci(t.speedup), t.verdict or "",
                      f"{t.first_call_s:.2f}" if t.first_call_s is not None else "-")
    parts = [head, times]
    cands = candidate_rows(r.to_dict())
    if cands:
        table = Table(title="candidates (" + candidate_choice_line(r.to_dict()) + ")")
        for col in CANDIDATE_COLUMNS:
            table.add_column(col, justify="left" if col in ("candidate", "verified") else "right")
        for row in cands:
            table.add_row(*row)
        parts.append(table)
        parts += [Text(line) for line in choice_lines(r.to_dict())]
    parts += [Text(line if i == 0 else "  " + line) for i, line in enumerate(prediction_lines(r.to_dict(), 3))]
    checks = Table(title=f"outputs against the {r.reference} reference")
    for col in ("output", "dtype", "planned error", "original error", "limit", "ok"):
        checks.add_column(col)
    for c in r.outputs:
        fmt = (lambda x: f"{x:.2e}" if x is not None else "-")
        checks.add_row(str(c.index), c.dtype, fmt(c.error), fmt(c.original_error), f"{c.limit:.0e}",
                       "[green]yes[/]" if c.ok else "[red]no[/]")
    parts.append(checks)
    if r.rewrites:
        rw = Table(title="rewrites")
        for col in ("group", "pattern", "variant", "applied", "detail"):
            rw.add_column(col)
        for d in r.rewrites:
            rw.add_row(d["site_id"], d["pattern"], d["variant"], "yes" if d["applied"] else "[yellow]no[/]",
                       d["detail"])
        parts.append(rw)
    parts += [Text.from_markup(f"[yellow]warning:[/] {w}") for w in r.warnings]
    return Group(*parts)


MODEL_LABELS = {"eager": "original (eager)", "captured": "captured graph, unrewritten", "planned": "planned",
                "compile": "torch.compile (whole model)", "channels_last+compile": "channels-last, then torch.compile",
                "captured+compile": "captured graph, then torch.compile",
                "planned+compile": "planned, then torch.compile",
                "planned+channels_last+compile": "planned, channels-last, then torch.compile"}
CANDIDATE_COLUMNS = ("candidate", "median ms", "speedup over eager [95% CI]", "verified", "compile + 1st call s",
                     "break-even calls", "saving ms: predicted / measured", "what it is")


def candidate_choice_line(v: dict[str, Any]) -> str:
    c = v.get("candidates") or {}
    return f"chosen: {c.get('chosen')} -- {c.get('why')}" if c else ""


def choice_lines(v: dict[str, Any]) -> list[str]:
    """Where the chosen candidate's time went, a step a line (planning.explain), and each candidate the search did
    not build, with why (planning.search)."""
    c = v.get("candidates") or {}
    lines = (["where the time went:"] + [f"  {x}" for x in c.get("explanation") or []]) if c.get("explanation") else []
    not_tried = c.get("not_tried") or {}
    if not_tried:
        lines.append(f"not tried ({len(not_tried)}):")
        lines += [f"  {name}: {why}" for name, why in not_tried.items()]
    return lines


def candidate_rows(v: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per candidate timed end to end (fxfusion.planning.candidates): its time, speedup, whether its outputs
    verified, what compiling it cost and after how many calls that pays; the chosen one marked."""
    c = v.get("candidates") or {}
    rows = []
    for r in c.get("candidates") or []:
        mark = " (chosen)" if r["name"] == c.get("chosen") else ""
        if r.get("median_ms") is None:
            rows.append((r["name"] + mark, "-", f"{r.get('status')}: {r.get('reason') or ''}"[:60], "-", "-", "-", "-",
                         r.get("config") or ""))
            continue
        verified = {True: "yes", False: "no", None: "-"}[r.get("verified")]
        setup = "-" if r.get("setup_s") is None else f"{r['setup_s']:.1f}"
        even = "-" if r.get("break_even_calls") is None else f"{r['break_even_calls']:.0f}"
        rows.append((r["name"] + mark, f"{r['median_ms']:.4f}", _fmt_ci(r.get("speedup")) if r["name"] != "eager"
                     else "1.00x", verified, setup, even, prediction_cell(r.get("prediction")), r.get("config") or ""))
    return rows


def prediction_cell(p: dict[str, Any] | None) -> str:
    """A rewritten candidate's saving over its base (planned: eager; planned + compile: whole-model compile),
    predicted / measured, and the prediction's error."""
    if not p:
        return "-"
    pred = "-" if p.get("predicted_saving_ms") is None else f"{p['predicted_saving_ms']:.4f}"
    return (f"{pred} / {p['measured_saving_ms']:.4f} over {p['over']}"
            + ("" if p.get("error_pct") is None else f" ({p['error_pct']:+.0f}%)")
            + (UNPREDICTED if pred == "-" and p["over"] != "eager" else "")
            + (", regions timed in the model's layout" if p.get("layout") == "model layout" else "")
            + {"whole model": ", measured with the whole model" + (" run eagerly" if p.get("over") == "eager"
                                                                      else " compiled"),
               "regions": ", from regions compiled alone", "mixed": ", partly from regions compiled alone"}.get(
                p.get("basis"), "")
            + (f", the share of the model it saved in {p['carried_from']} carried to this configuration"
               if p.get("carried_from") else "")
            + ("" if p.get("comparable", True) else f"; not comparable: its base ran {p['base_ms_predicted']:.4f} ms "
               f"when predicted and {p.get('home_base_ms', p['base_ms']):.4f} ms here (the host's speed moved)")
            + ("" if p.get("floor_error_pct") is None else
               f"; fastest rounds: {p['predicted_floor_fraction']:.1%} / {p['measured_floor_fraction']:.1%} of the base "
               f"({p['floor_error_pct']:+.0f}%)"))
# A compiled candidate without a prediction: some applied group was timed neither in its class with the whole model
# compiled nor as a region compiled alone -- the compiled regime was off (the CPU's default), or the in-model budget
# ran out first (resnet50 on the H200 with a 30 s budget, 2026-12-02 00:03 UTC).
UNPREDICTED = (", not predicted: its groups were not all timed compiled (the compiled regime off, --compiled-regime; "
               "or the in-model budget spent, --insitu-budget-s: the warnings name the groups)")
# Which prediction a number is: the report's summary has the per-site library estimate, the verification an
# in-model one; each sentence names its own, so two different "predicted" figures on one page are never confused.
_SOURCES = {"in_context": " with the whole model (each class of rewrites applied alone to the model, run eagerly)",
            "in_model": " in the model (each group's region timed inside the model)",
            "library": " from the pattern library (each group's standalone timings)",
            "mixed": " in the model (groups timed inside the model; the library's timings for the others)"}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.0f}%"


def prediction_lines(v: dict[str, Any], digits: int = 4) -> list[str]:
    """Predicted against measured, one sentence each: in ms (``digits`` decimals), as paired fractions, and the
    library's prediction.  ``v`` is a verification as reported (:meth:`VerificationResult.to_dict`); every renderer
    says it this way."""
    applied = any(r.get("applied") for r in v.get("rewrites") or [])
    if v.get("nothing_applied"):
        return [v["nothing_applied"]]
    if v.get("measured_saving_ms") is None:
        return []
    pred = v.get("predicted_saving_ms")
    source = _SOURCES.get(v.get("prediction") or "", "") if applied else " (nothing applied)"
    lo, hi = v.get("measured_saving_ci_ms") or (float("nan"), float("nan"))
    noise = " (the measured saving is within the noise)" if v.get("saving_within_noise") else ""
    ms = f".{digits}f"
    lines = [f"saving per forward: predicted {'unknown' if pred is None else f'{pred:{ms}} ms'}{source}, measured "
             f"{v['measured_saving_ms']:{ms}} ms [{lo:{ms}}, {hi:{ms}}]; prediction error "
             f"{_pct(v.get('prediction_error_pct'))}{noise}"]
    if v.get("predicted_fraction") is not None and v.get("measured_fraction") is not None:
        flo, fhi = v.get("measured_fraction_ci") or (float("nan"), float("nan"))
        lines.append(f"as fractions of the original's time, paired per round: predicted {v['predicted_fraction']:.1%}, "
                     f"measured {v['measured_fraction']:.1%} [{flo:.1%}, {fhi:.1%}]; "
                     f"error {_pct(v.get('fraction_error_pct'))}")
    if v.get("prediction_comparable") is False:
        lines.append(f"not comparable: the original ran over {HOST_MOVED}x faster or slower here than when the "
                     "prediction was measured (the host's speed moved)")
    if v.get("regions_predicted_saving_ms") is not None:
        lines.append(f"the groups' regions timed inside the model predicted {v['regions_predicted_saving_ms']:{ms}} ms "
                     f"(error {_pct(v.get('regions_prediction_error_pct'))})")
    if v.get("library_predicted_saving_ms") is not None:
        lines.append(f"the pattern library alone (the groups' standalone timings) predicted "
                     f"{v['library_predicted_saving_ms']:{ms}} ms "
                     f"(error {_pct(v.get('library_prediction_error_pct'))})")
    return lines


def end_to_end_rows(v: dict[str, Any]) -> list[tuple[str, str, str, str, bool]]:
    """(model, median ms, speedup [95% CI], verdict or why it did not run, ran) for each end-to-end timing."""
    rows = []
    for name, label in MODEL_LABELS.items():
        t = (v.get("timings") or {}).get(name)
        if not t:
            continue
        if t.get("status") != "ok" or t.get("median_ms") is None:
            rows.append((label, "-", "-", f"{t.get('status')}: {t.get('reason') or ''}", False))
        else:
            rows.append((label, f"{t['median_ms']:.4f}", _fmt_ci(t.get("speedup")), t.get("verdict") or "", True))
    return rows


GROUP_COLUMNS = ("group", "pattern", "variant", "in-model saving ms [95% CI]", "library saving ms")


def group_rows(v: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """One row per applied group of the plan: its variant and its saving inside the model and in the library."""
    rows = []
    for g in (v.get("plan") or {}).get("groups") or []:
        im, lib = g.get("in_model") or {}, g.get("library_saving_ms")
        saving = (f"{im['saving_ms']:.4f} [{im['ci_low_ms']:.4f}, {im['ci_high_ms']:.4f}]"
                  + (f" (timed as {im['same_as']}: the same work)" if im.get("same_as") else "")
                  if im.get("saving_ms") is not None else "-")
        how = " (decided in the model)" if g.get("decided_in_model") else ""
        rows.append((g["id"], g["pattern"], g["variant"] + how, saving, "-" if lib is None else f"{lib:.4f}"))
    return rows


def render_markdown(v: dict[str, Any]) -> list[str]:
    """Markdown lines for a verification as it appears in a report (``VerificationResult.to_dict()`` + the plan)."""
    def table(headers, rows):
        return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + \
            ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]

    timing = v.get("timing") or ""
    lines = ["## Verification", "", f"**{'VERIFIED' if v.get('ok') else 'NOT VERIFIED'}**: {v.get('reason', '')}", "",
             f"End to end on {v.get('device')}{', ' + timing + ' timing' if timing not in ('', 'cpu') else ''}:", ""]
    lines += table(("model", "median ms", "speedup over the original [95% CI]", "verdict"),
                   [row[:4] for row in end_to_end_rows(v)])
    cands = candidate_rows(v)
    if cands:
        lines += ["", f"Candidates, {candidate_choice_line(v)}:", ""] + table(CANDIDATE_COLUMNS, cands)
        lines += [""] + [f"    {x}" for x in choice_lines(v)] if choice_lines(v) else []
    said = prediction_lines(v)
    lines += [""] + [line[0].upper() + line[1:] + "." for line in said] if said else []
    groups = group_rows(v)
    lines += [""] + table(GROUP_COLUMNS, groups) if groups else []
    lines += [""] + [f"- warning: {w}" for w in v.get("warnings") or []]
    return lines
