"""Verdict stability: two runs' verdicts side by side (``benchmarks/bench_noise.py``: idle against a synthetic load,
or idle against idle again), with agreement, fuse<->avoid flips, and how many disagreements are effects the idle run
measured within the zone no contended measurement may call fuse or avoid
(:data:`fxfusion.measure.noise.CONTENDED_MIN_EFFECT`; docs/decisions.md, "Noise")."""

from __future__ import annotations

from fxfusion.measure.noise import CONTENDED_MIN_EFFECT


def verdicts(profile, analysis: dict) -> dict[str, dict]:
    """key -> {"verdict", "noisy"}: every calibration entry in both regimes, every decided site of the analysis."""
    out = {}
    for e in profile.entries:
        for regime in e.regimes():
            d = e.decision_for(regime)
            out[f"calibrate {e.key()} [{regime}]"] = {"verdict": d.verdict, "noisy": d.noisy,
                                                      "speedup": d.speedup.median if d.speedup else None}
    for s in analysis["sites"]:
        if s["verdict"] in ("fuse", "neutral", "avoid"):
            noisy = bool((s.get("decision") or {}).get("noisy"))
            out[f"analyze {s['id']} {s['pattern']} [{analysis['metadata'].get('regime')}]"] = {
                "verdict": s["verdict"], "noisy": noisy, "speedup": (s.get("speedup") or {}).get("median")}
    return out


def compare(idle: dict[str, dict], loaded: dict[str, dict]) -> dict:
    """Rows (key, idle, loaded, outcome) for the keys both runs decided, with agreement, flips, and how many
    disagreements the idle run measured within the contended zone (``within_zone``)."""
    rows, agree, flips, within_zone = [], 0, 0, 0
    for key in [k for k in idle if k in loaded]:
        a, b = idle[key]["verdict"], loaded[key]["verdict"]
        outcome = "agree" if a == b else "FLIP" if {a, b} == {"fuse", "avoid"} else "differ"
        agree += outcome == "agree"
        flips += outcome == "FLIP"
        x = idle[key].get("speedup")
        within_zone += outcome == "differ" and x is not None and abs(x - 1.0) <= CONTENDED_MIN_EFFECT
        rows.append((key, a + (" (noisy)" if idle[key]["noisy"] else ""),
                     b + (" (noisy)" if loaded[key]["noisy"] else ""), outcome))
    n = len(rows)
    return {"rows": rows, "n": n, "agree": agree, "flips": flips, "agreement": agree / n if n else 0.0,
            "within_zone": within_zone,
            "only_one_run": sorted(set(idle) ^ set(loaded))}
