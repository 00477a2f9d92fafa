"""Verdict stability (fxfusion.reports.stability, what benchmarks/bench_noise.py prints): which verdicts it compares
and how agreement and flips are counted."""

from __future__ import annotations

from fxfusion.reports import stability


def test_agreement_counts_equal_verdicts_and_flips_only_fuse_against_avoid():
    idle = {"a": {"verdict": "fuse", "noisy": False}, "b": {"verdict": "neutral", "noisy": True},
            "c": {"verdict": "avoid", "noisy": False}, "d": {"verdict": "fuse", "noisy": False},
            "only idle": {"verdict": "fuse", "noisy": False}}
    loaded = {"a": {"verdict": "fuse", "noisy": False}, "b": {"verdict": "neutral", "noisy": False},
              "c": {"verdict": "fuse", "noisy": False}, "d": {"verdict": "neutral", "noisy": True}}
    r = stability.compare(idle, loaded)
    assert (r["n"], r["agree"], r["flips"]) == (4, 2, 1) and r["agreement"] == 0.5
    assert [row[3] for row in r["rows"]] == ["agree", "agree", "FLIP", "differ"]
    assert r["rows"][1][1] == "neutral (noisy)" and r["only_one_run"] == ["only idle"]
    assert r["within_zone"] == 0  # no speedups given: none counted


def test_disagreements_within_the_contended_zone_are_counted_not_subtracted():
    idle = {k: {"verdict": "fuse", "noisy": False, "speedup": x} for k, x in (("a", 1.04), ("b", 1.3), ("c", 1.09))}
    loaded = {k: {"verdict": "neutral", "noisy": False, "speedup": 1.0} for k in idle}
    r = stability.compare(idle, loaded)
    assert (r["agree"], r["within_zone"], r["agreement"]) == (0, 2, 0.0)


def test_verdicts_cover_both_regimes_of_each_entry_and_the_decided_sites(tiny_profile):
    from fxfusion.profiles.profile import Profile

    profile = Profile.load(tiny_profile)
    analysis = {"metadata": {"regime": "pipelined"},
                "sites": [{"id": "g0.s0", "pattern": "conv2d_bn", "verdict": "fuse", "decision": {"noisy": False}},
                          {"id": "g0.s1", "pattern": "conv2d_bn", "verdict": "illegal", "decision": None}]}
    v = stability.verdicts(profile, analysis)
    assert len(v) == 2 * len(profile.entries) + 1 and v["analyze g0.s0 conv2d_bn [pipelined]"]["verdict"] == "fuse"
