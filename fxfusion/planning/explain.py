"""Where the time went: the chosen candidate read as steps from eager, one line a step.

The chosen candidate's :class:`~fxfusion.planning.configs.Spec` is a path from the user's module run eagerly:
``compile`` (Inductor, default options), then its configuration (freezing, CUDA graphs), then the channels-last
layout, then the plan's rewrites.  Each step is the ratio of the medians of two candidates timed in the same
interleaved run (a step whose candidate was not built is merged into the next); the rewrites' step names each class
of rewrites with its share of the model as measured in that context (:mod:`fxfusion.planning.incontext`) where it
was.
"""

from __future__ import annotations

from fxfusion.planning.configs import CONFIGS, Spec

STEP_WORDS = {"compile": "torch.compile", "freezing": "Inductor freezing", "cudagraphs": "CUDA graphs",
              "freezing+cudagraphs": "Inductor freezing and CUDA graphs", "layout": "channels-last layout",
              "rewrites": "the plan's rewrites"}


def _path(chosen: Spec) -> list[tuple[str, Spec]]:
    steps = [("eager", Spec())]
    if chosen.config is None:
        return steps + ([("rewrites", chosen)] if chosen.rewrites else [])
    steps.append(("compile", Spec(config=CONFIGS["default"])))
    if chosen.config.word != "default":
        steps.append((chosen.config.word, Spec(config=chosen.config)))
    if chosen.channels_last:
        steps.append(("layout", Spec(channels_last=True, config=chosen.config)))
    if chosen.rewrites or chosen.captured:
        steps.append(("rewrites" if chosen.rewrites else "capture", chosen))
    return steps


def explain(choice, plan, found=None) -> list[str]:
    """One line a step from eager to ``choice.chosen`` (a candidates.Choice with its rows), and the classes of
    rewrites behind the rewrites' step (``plan``'s groups as the chosen context applies them)."""
    rows = {r["name"]: r for r in choice.candidates if r.get("median_ms") is not None and r.get("verified")}
    try:
        chosen = Spec.parse(choice.chosen)
    except Exception:  # noqa: BLE001 - a name this module does not read: nothing to explain
        return []
    lines, before = [], None
    for step, spec in _path(chosen):
        row = rows.get(spec.name)
        if row is None:
            continue
        if before is not None:
            ratio = before["median_ms"] / row["median_ms"]
            what = STEP_WORDS.get(step, step)
            lines.append(f"{what}: {ratio:.2f}x ({before['median_ms']:.4f} -> {row['median_ms']:.4f} ms, "
                         f"{spec.name} over {before['name']})")
        before = row
    if chosen.rewrites and plan is not None:
        lines += [f"  {c}" for c in _classes(plan, chosen)]
    if found is not None and found.host_line():
        lines.append(found.host_line())
    if found is not None and found.ranking:
        ranked = sorted(found.ranking.items(), key=lambda kv: kv[1])
        lines.append("configurations ranked on the whole model: "
                     + ", ".join(f"{n} {ms:.4f} ms" for n, ms in ranked))
    return lines


def _classes(plan, chosen: Spec) -> list[str]:
    """Each class of rewrites the chosen candidate applies, with what it saves in its context where measured."""
    by: dict[tuple[str, str], list] = {}
    for g in plan.groups_for(chosen.context):
        by.setdefault((g.pattern, g.variant), []).append(g)
    out = []
    for (pattern, variant), members in by.items():
        timing = members[0].classes.get(chosen.context)
        share = (f"saves {timing.fraction:.1%} of the model in this context (95% CI {timing.ci_low_ms:+.4f} to "
                 f"{timing.ci_high_ms:+.4f} ms)" if timing is not None else "not measured in this context")
        out.append(f"{pattern} -> {variant} ({len(members)} group(s)): {share}")
    return out
