"""Helpers shared by the report, compare and validate tests: edited copies of real profiles, a small analysis.

Edits go through the real decision rules (:func:`fxfusion.stats.speedup`, the calibrator's ``_decide``), so an edited
profile is as consistent as a measured one, and it is re-validated on the way out.
"""

from __future__ import annotations

import copy
from html.parser import HTMLParser

from fxfusion.calibrate import _decide
from fxfusion.profile import Entry, Profile, SpeedupCI, decision_to_dict
from fxfusion.stats import speedup


def pin_speedup(entry: Entry, name: str, times: float) -> None:
    """Give variant ``name`` constant samples, ``times`` faster than eager's fastest sample (``times`` > 1) or slower
    than its slowest (``times`` < 1), and decide the entry again.  Every bootstrap median of eager lies between its
    fastest and slowest sample, so the whole interval lands on one side: fuse for times >= 1.1, avoid for <= 0.9,
    however noisy the real samples were."""
    eager, v = entry.variant("eager"), entry.variant(name)
    base = min(eager.samples_ms) if times >= 1 else max(eager.samples_ms)
    v.samples_ms = [base / times] * len(v.samples_ms)
    v.median_ms, v.iqr_ms = base / times, 0.0
    s = speedup(eager.samples_ms, v.samples_ms)
    v.speedup, v.verdict = SpeedupCI(s.median, s.ci_low, s.ci_high), s.verdict()
    entry.decision = _decide(entry.pattern, entry.shape, entry.dtype, entry.device, entry.variants)


def edited(profile: Profile, edits: dict[tuple[str, int], tuple[str, float]]) -> Profile:
    """A validated copy of ``profile`` with {(pattern, index by FLOPs among its entries): (variant, times)}."""
    out = Profile.from_dict(copy.deepcopy(profile.to_dict()))
    for (pattern, index), (variant, times) in edits.items():
        entries = sorted((e for e in out.entries if e.pattern == pattern), key=lambda e: e.flops)
        pin_speedup(entries[index], variant, times)
    return Profile.from_dict(out.to_dict())


def make_analysis(profile: Profile) -> dict:
    """A small analysis report (schemas/analysis.schema.json) whose decisions come from a real profile."""
    entry = next(e for e in profile.entries if e.pattern == "linear_bias_relu")
    d = entry.decision
    best, eager = entry.variant(d.best_variant), entry.variant("eager")
    fuse = d.verdict == "fuse"
    base = {"title": entry.title, "graph_index": 0, "roles": {"weight": "w", "bias": "b", "input": "x"},
            "written_as": "F.linear", "source": "model.py:3", "warnings": []}
    sites = [
        {**base, "id": "g0.s0", "pattern": entry.pattern, "nodes": ["linear", "relu"], "shape": dict(entry.shape),
         "dtype": entry.dtype, "status": "fusible", "reasons": [], "verdict": d.verdict,
         "best_variant": d.best_variant, "baseline_variant": "eager",
         "speedup": None if d.speedup is None else vars(d.speedup), "decision": decision_to_dict(d),
         "baseline_ms": eager.median_ms, "best_ms": best.median_ms if best else None,
         "saved_ms": max(0.0, eager.median_ms - best.median_ms) if fuse else None,
         "bytes_unfused": entry.bytes_unfused, "bytes_fused": entry.bytes_fused,
         "bytes_saved": entry.bytes_unfused - entry.bytes_fused},
        {**base, "id": "g0.s1", "pattern": "linear_bias_gelu", "nodes": ["linear_1", "gelu"],
         "shape": dict(entry.shape), "dtype": entry.dtype, "status": "illegal",
         "reasons": ["the intermediate <linear_1> is also used by add_1"], "verdict": "illegal",
         "best_variant": None, "baseline_variant": None, "speedup": None, "decision": None, "baseline_ms": None,
         "best_ms": None, "saved_ms": None, "bytes_unfused": None, "bytes_fused": None, "bytes_saved": None},
    ]
    counts = {v: sum(s["verdict"] == v for s in sites) for v in ("fuse", "neutral", "avoid", "undecided")}
    return {
        "schema_version": "1.0", "kind": "fxfusion.analysis",
        "metadata": {"model": "tests/model.py", "entry": "get_model()+get_inputs()", "device": "cpu",
                     "dtype": entry.dtype, "mode": "profile", "profile": "tiny.json",
                     "hardware": profile.metadata["hardware"], "device_name": profile.metadata["device_name"],
                     "torch_version": profile.metadata["torch_version"], "fxfusion_version": "0.1.0", "threads": 2,
                     "date": profile.metadata["date"], "command": "pytest make_analysis"},
        "capture": {"method": "export", "graphs": 1, "nodes": 6, "graph_breaks": [], "notes": [], "seconds": 0.1},
        "sites": sites,
        "unmatched": {"aten.add.Tensor": 1, "aten.mul.Tensor": 1},
        "summary": {"sites": 2, "fusible": 1, "illegal": 1, "already_fused": 0, **counts,
                    "saved_ms_per_forward": sites[0]["saved_ms"] or 0.0,
                    "bytes_saved_per_forward": sites[0]["bytes_saved"] if fuse else 0,
                    "matched_nodes": 4, "unmatched_nodes": 2},
        "warnings": ["a <warning> with markup"],
    }


class HtmlDoc(HTMLParser):
    """Parses a report and keeps what tests look at: figures with their images, tagged rows, and the tag balance."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.figures: list[dict] = []  # {"key", "src", "alt", "caption"}
        self.rows: list[dict] = []  # <tr> with data-* attributes: their attributes and cell texts
        self.tags: list[str] = []  # every start tag, in order
        self.stack: list[str] = []
        self.unbalanced: list[str] = []
        self._row = self._cell = self._caption = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "figure":
            self.figures.append({"key": a.get("data-plot"), "src": None, "alt": None, "caption": ""})
        elif tag == "img" and self.figures:
            self.figures[-1].update(src=a.get("src"), alt=a.get("alt"))
        elif tag == "figcaption":
            self._caption = True
        elif tag == "tr" and any(k.startswith("data-") for k in a):
            self._row = {"attrs": a, "cells": []}
            self.rows.append(self._row)
        elif tag == "td" and self._row is not None:
            self._row["cells"].append("")
            self._cell = True

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.unbalanced.append(tag)
        else:
            self.stack.pop()
        if tag == "figcaption":
            self._caption = None
        elif tag == "tr":
            self._row = None
        elif tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._caption and self.figures:
            self.figures[-1]["caption"] += data
        if self._cell and self._row is not None:
            self._row["cells"][-1] += data
