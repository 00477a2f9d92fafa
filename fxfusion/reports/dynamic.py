"""How a plan over dynamic shapes is told (``analyze --apply --dynamic``): the ranges and buckets, each planned site at
each bucket, each bucket's end-to-end times and choice, and the shapes verified against float64."""

from __future__ import annotations

from typing import Any


def _speedup(row: dict[str, Any]) -> str:
    s = row.get("speedup")
    if not row.get("planned"):
        return "-"
    return f"{row['variant']} {s['median']:.2f}x" if s else row["variant"]


def _ms(timing: dict[str, Any] | None) -> str:
    if not timing or timing.get("median_ms") is None:
        return "-"
    s = timing.get("speedup")
    return f"{timing['median_ms']:.3f}" + (f" ({s['median']:.2f}x)" if s else "")


def dynamic_lines(section: dict[str, Any]) -> list[str]:
    """The plain-text head of the section: the ranges, the buckets, the candidate served and why."""
    ranges = ", ".join(f"{n}={lo}:{hi}" for n, (lo, hi) in section["ranges"].items())
    kept = sum(1 for s in section["sites"] if s["kept"])
    buckets = section["buckets"]
    lines = [f"dynamic shapes {ranges}: measured at buckets {' | '.join(buckets)}; {kept} rewrite"
             f"{'s' * (kept != 1)} kept at every bucket (the sites table and the verification above are the middle "
             f"bucket's, {buckets[len(buckets) // 2]})"]
    if section.get("chosen"):
        lines.append(f"serving {section['chosen']} over the range: {section.get('why')}")
    return lines


def render_dynamic(section: dict[str, Any]):
    """A rich renderable of the report's ``dynamic`` section."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    buckets = section["buckets"]
    sites = Table(title="sites at each bucket (planned variant, its speedup there)")
    for col in ["site", "pattern", "kept"] + buckets + ["why not"]:
        sites.add_column(col)
    for s in section["sites"]:
        if not any(b["planned"] for b in s["buckets"]) and not s["kept"]:
            continue  # refused alike everywhere: the analysis table says why
        sites.add_row(s["id"], s["pattern"], "yes" if s["kept"] else "no", *[_speedup(b) for b in s["buckets"]],
                      (s.get("why") or "")[:90])
    times = Table(title="end to end at each bucket (median ms, speedup over eager)")
    for col in ("bucket", "eager", "planned", "compile", "chosen there", "verified"):
        times.add_column(col)
    for b in section["end_to_end"]:
        t = b["timings"]
        times.add_row(b["bucket"], _ms(t.get("eager")), _ms(t.get("planned")), _ms(t.get("compile")),
                      b.get("chosen") or "-", "yes" if b["ok"] else "no")
    checked = Table(title="outputs against float64 at each shape")
    for col in ("shape", "measured there", "largest error", "limit", "ok"):
        checked.add_column(col)
    for r in section["verified_shapes"]:
        checked.add_row(r["shape"], "yes" if r["measured"] else "no (never measured)",
                        f"{r['error']:.2e}" if r.get("error") is not None else "-",
                        f"{r['limit']:.0e}" if r.get("limit") is not None else "-",
                        "yes" if r["ok"] else f"no: {r.get('reason') or ''}"[:60])
    return Group(*[Text(line) for line in dynamic_lines(section)], sites, times, checked)


def dynamic_markdown(section: dict[str, Any]) -> str:
    """The section as markdown (``-o report.md``): the head lines and the three tables."""
    buckets = section["buckets"]
    out = ["", "## Dynamic shapes", ""] + [line + "  " for line in dynamic_lines(section)] + [""]
    out += ["| site | pattern | kept | " + " | ".join(buckets) + " | why not |",
            "|---|---|---|" + "---|" * len(buckets) + "---|"]
    out += [f"| {s['id']} | {s['pattern']} | {'yes' if s['kept'] else 'no'} | "
            + " | ".join(_speedup(b) for b in s["buckets"]) + f" | {s.get('why') or ''} |"
            for s in section["sites"] if s["kept"] or any(b["planned"] for b in s["buckets"])]
    out += ["", "| bucket | eager ms | planned ms | chosen there | verified |", "|---|---|---|---|---|"]
    out += [f"| {b['bucket']} | {_ms(b['timings'].get('eager'))} | {_ms(b['timings'].get('planned'))} | "
            f"{b.get('chosen') or '-'} | {'yes' if b['ok'] else 'no'} |" for b in section["end_to_end"]]
    out += ["", "| shape | measured there | largest error | ok |", "|---|---|---|---|"]
    out += [f"| {r['shape']} | {'yes' if r['measured'] else 'no (never measured)'} | "
            f"{r['error']:.2e} | {'yes' if r['ok'] else 'no'} |" if r.get("error") is not None else
            f"| {r['shape']} | {'yes' if r['measured'] else 'no'} | - | {'yes' if r['ok'] else 'no'} |"
            for r in section["verified_shapes"]]
    return "\n".join(out) + "\n"
