"""Every profile and report the project ships validates, and says where and how it was measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fxfusion.profiles.profile import Profile
from fxfusion.profiles.schema import schema_errors

ROOT = Path(__file__).resolve().parent.parent
PROFILES = sorted((ROOT / "profiles").glob("*.json"))
REPORTS = sorted((ROOT / "docs" / "results").glob("*-analyze/*.json"))  # `fxfusion analyze` reports
BENCH_APPLY = sorted((ROOT / "docs" / "results").glob("*-bench-apply/bench_apply_*.json"))  # benchmark artifacts


def test_there_are_shipped_profiles():
    assert any(p.name == "h200.json" for p in PROFILES)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_shipped_profile_validates_and_names_its_origin(path):
    profile = Profile.load(path)
    meta = profile.metadata
    assert meta["command"].startswith("fxfusion calibrate") and meta["date"] and meta["device_name"]
    keys = [e.key() for e in profile.entries]
    assert len(keys) == len(set(keys)), "no entry may overwrite another"
    for e in profile.entries:
        assert e.decision.speedup is not None, e.key()
        for v in e.variants:
            if v.status == "ok":
                assert v.samples_ms and v.kernels_per_call is not None and v.rel_error <= v.tolerance
                if meta["device"].startswith("cuda"):
                    assert v.device_ms is not None and v.host_overhead_ms is not None, (e.key(), v.name)


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.name)
def test_shipped_analysis_reports_validate(path):
    data = json.loads(path.read_text())
    assert schema_errors(data, "analysis") == []
    assert data["verification"]["ok"] is True


@pytest.mark.parametrize("path", BENCH_APPLY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_bench_apply_runs_verified_and_never_slower(path):
    """What docs/results.md says of these runs: every planned model verified, none slower than eager beyond noise."""
    runs = json.loads(path.read_text())
    assert runs
    for name, run in runs.items():
        v = run["verification"]
        assert v["ok"] is True, name
        assert v["planned_verdict"] != "avoid", name
        if any(r["applied"] for r in v["rewrites"]):
            assert run["plan"]["prediction"] == "in_model", name
