"""How a plan over dynamic shapes is told (``analyze --apply --dynamic``): the ranges and buckets, each planned site at
each bucket, each bucket's end-to-end times and choice, and the shapes verified against float64 -- the same three
tables in the terminal, markdown and HTML (:func:`dynamic_tables`)."""

from __future__ import annotations

from html import escape
from typing import Any

Table = tuple[str, tuple[str, ...], list[list[str]]]  # title, headers, rows of text


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


def dynamic_tables(section: dict[str, Any]) -> list[Table]:
    """The section's three tables: sites at each bucket (those refused alike everywhere left to the analysis
    table), end to end at each bucket, outputs against float64 at each shape."""
    buckets = section["buckets"]
    sites = [[s["id"], s["pattern"], "yes" if s["kept"] else "no", *[_speedup(b) for b in s["buckets"]],
              s.get("why") or ""] for s in section["sites"] if s["kept"] or any(b["planned"] for b in s["buckets"])]
    times = [[b["bucket"], _ms(b["timings"].get("eager")), _ms(b["timings"].get("planned")),
              _ms(b["timings"].get("compile")), b.get("chosen") or "-", "yes" if b["ok"] else "no"]
             for b in section["end_to_end"]]
    checked = [[r["shape"], "yes" if r["measured"] else "no (never measured)",
                f"{r['error']:.2e}" if r.get("error") is not None else "-",
                f"{r['limit']:.0e}" if r.get("limit") is not None else "-",
                "yes" if r["ok"] else f"no: {r.get('reason') or ''}"] for r in section["verified_shapes"]]
    return [("sites at each bucket (planned variant, its speedup there)",
             ("site", "pattern", "kept", *buckets, "why not"), sites),
            ("end to end at each bucket (median ms, speedup over eager)",
             ("bucket", "eager", "planned", "compile", "chosen there", "verified"), times),
            ("outputs against float64 at each shape", ("shape", "measured there", "largest error", "limit", "ok"),
             checked)]


def render_dynamic(section: dict[str, Any]):
    """A rich renderable of the report's ``dynamic`` section."""
    from rich.console import Group
    from rich.table import Table as RichTable
    from rich.text import Text

    tables = []
    for title, headers, rows in dynamic_tables(section):
        t = RichTable(title=title)
        for col in headers:
            t.add_column(col)
        for row in rows:
            t.add_row(*row)
        tables.append(t)
    return Group(*[Text(line) for line in dynamic_lines(section)], *tables)


def dynamic_markdown(section: dict[str, Any]) -> str:
    """The section as markdown (``-o report.md``): the head lines and the three tables."""
    out = ["", "## Dynamic shapes", ""] + [line + "  " for line in dynamic_lines(section)]
    for title, headers, rows in dynamic_tables(section):
        out += ["", f"*{title}*", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def dynamic_html(section: dict[str, Any]) -> str:
    """The section as HTML (``-o report.html``), every string escaped: the head lines and the three tables."""
    out = ['<section id="dynamic"><h2>Dynamic shapes</h2>'] + [f"<p>{escape(line)}</p>" for line in
                                                               dynamic_lines(section)]
    for title, headers, rows in dynamic_tables(section):
        head = "".join(f"<th>{escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        out.append(f'<p>{escape(title)}:</p><div class="wide"><table class="dynamic"><thead><tr>{head}</tr></thead>'
                   f"<tbody>{body}</tbody></table></div>")
    return "".join(out) + "</section>"
