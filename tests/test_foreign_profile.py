"""A profile of another device is a one-line error naming both devices (or an explicit opt-in), never a raw CUDA error
or a silent use; ``analyze`` without ``--profile`` uses this machine's calibrated profile when there is one."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

import fxfusion
from fxfusion.cli import analyze as analyze_cli
from fxfusion.cli.commands import app
from fxfusion.errors import FxFusionError
from fxfusion.measure.hardware import device_name
from fxfusion.profiles.machine import check_profile, find_machine_profile, foreign_reason
from fxfusion.profiles.profile import Profile

ROOT = Path(__file__).resolve().parent.parent
H200 = ROOT / "profiles" / "h200.json"
MODELS = ROOT / "models"
runner = CliRunner()


class Mlp(nn.Module):  # one linear_bias_gelu site, which the H200 profile has entries for
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 64)

    def forward(self, x):
        return torch.nn.functional.gelu(self.fc(x))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA profile is this machine's kind of device here")
@pytest.mark.parametrize("as_path", [False, True], ids=["loaded", "path"])
def test_a_cuda_profile_on_this_cpu_is_one_line_naming_both_devices(as_path):
    profile = str(H200) if as_path else Profile.load(H200)
    with pytest.raises(FxFusionError) as info:
        fxfusion.plan(Mlp().eval(), profile, (torch.randn(4, 64),))
    message = str(info.value)
    assert "\n" not in message and "NVIDIA H200" in message and "runs on cpu" in message
    assert "allow_foreign=True" in message and "--allow-foreign-profile" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_allowed_foreign_profile_plans_with_its_entries_and_says_so():
    plan = fxfusion.plan(Mlp().eval(), Profile.load(H200), (torch.randn(4, 64),), allow_foreign=True,
                         check_overhead=False, in_model=False)
    assert plan.device.type == "cpu"  # the model runs where its inputs are, never on the profile's device
    assert any("NVIDIA H200" in w and "used anyway" in w for w in plan.warnings)
    assert not any("regime only" in w for w in plan.warnings)  # schema 1.1: the pipelined regime planning asks for
    assert sum(1 for r in plan.refused if r.why == "undecided") == 0  # decided from the H200 entries


def _renamed(profile: Profile, name: str) -> Profile:
    other = copy.deepcopy(profile)
    other.metadata["device_name"] = name
    return other


def test_same_kind_other_device_name_is_foreign_and_another_host_only_a_note(tiny_profile):
    profile = Profile.load(tiny_profile)
    assert foreign_reason(profile, "cpu") is None and check_profile(profile, "cpu") == []
    other = _renamed(profile, "Some Other CPU 9000")
    assert "Some Other CPU 9000" in foreign_reason(other, "cpu") and device_name("cpu") in foreign_reason(other, "cpu")
    with pytest.raises(FxFusionError, match="another device's"):
        check_profile(other, "cpu")
    moved = copy.deepcopy(profile)
    moved.metadata["host"] = "elsewhere"
    [note] = check_profile(moved, "cpu")
    assert "measured on host elsewhere" in note


def _run(*args):
    result = runner.invoke(app, ["analyze", *map(str, args)])
    return result, result.stderr if result.stderr_bytes is not None else result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_refuses_a_foreign_profile_in_one_line_and_exits_1(tmp_path):
    out = tmp_path / "r.json"
    result, err = _run(MODELS / "gpt2_mlp.py", "--profile", H200, "--format", "json", "-o", out)
    assert result.exit_code == 1 and not out.exists()
    [line] = err.strip().splitlines()
    assert line.startswith("error: ") and "NVIDIA H200" in line and "--allow-foreign-profile" in line
    result, err = _run(MODELS / "gpt2_mlp.py", "--profile", H200, "--allow-foreign-profile", "--format", "json",
                       "-o", out)
    assert result.exit_code == 0, err
    report = json.loads(out.read_text())
    assert any("used anyway" in w for w in report["warnings"])
    assert report["metadata"]["regime"] == "pipelined"
    assert not any(s["verdict"] == "undecided" for s in report["sites"] if s["status"] == "fusible")


def _here(tiny_profile) -> Profile:
    """The session's profile as this machine's now (a test before may have changed torch's thread count)."""
    profile = Profile.load(tiny_profile)
    profile.metadata["threads"] = torch.get_num_threads()
    return profile


def test_machine_profile_is_the_newest_of_this_device_and_host(tiny_profile, tmp_path):
    profile = _here(tiny_profile)
    assert find_machine_profile(tmp_path, "cpu") is None
    for name, date, dev in (("old.json", "2026-01-01T00:00:00+00:00", None), ("new.json", "2026-11-30T00:00:00+00:00",
                            None), ("other.json", "2026-12-01T00:00:00+00:00", "Some Other CPU 9000")):
        p = _renamed(profile, dev) if dev else copy.deepcopy(profile)
        p.metadata["date"] = date
        p.save(tmp_path / name)
    (tmp_path / "broken.json").write_text("{")
    found = find_machine_profile(tmp_path, "cpu")
    assert found.path.name == "new.json" and socket.gethostname() in found.rule and "newest of 2" in found.rule
    for p in tmp_path.glob("*.json"):  # CPU timings scale with the thread count: another count is not this machine's
        if p.name != "broken.json":
            changed = Profile.load(p)
            changed.metadata["threads"] = torch.get_num_threads() + 1
            changed.save(p)
    assert find_machine_profile(tmp_path, "cpu") is None


def test_a_gpu_profile_is_found_for_a_card_of_its_name_on_any_host(monkeypatch):
    """The shipped H100 profile was measured on a lent machine named 'vm': an H100 of that name in any other host
    finds it (a GPU's verdicts do not depend on the host); a card of another name does not."""
    from fxfusion.profiles import machine

    shipped = Profile.load(Path(__file__).resolve().parent.parent / "profiles" / "h100.json")
    monkeypatch.setattr(machine.socket, "gethostname", lambda: shipped.metadata["host"] + "-elsewhere")
    monkeypatch.setattr(machine, "device_name", lambda device: shipped.metadata["device_name"])
    found = find_machine_profile(Path(__file__).resolve().parent.parent / "profiles", "cuda")
    assert found is not None and found.path.name == "h100.json"
    monkeypatch.setattr(machine, "device_name", lambda device: "NVIDIA H100 PCIe")
    assert find_machine_profile(Path(__file__).resolve().parent.parent / "profiles", "cuda") is None


def test_analyze_without_profile_uses_this_machines_profile_and_says_which(tiny_profile, tmp_path, monkeypatch):
    folder = tmp_path / "profiles"
    folder.mkdir()
    _here(tiny_profile).save(folder / "here.json")
    monkeypatch.setattr(analyze_cli, "PROFILE_FOLDER", folder)
    out = tmp_path / "r.json"
    model = tmp_path / "m.py"
    model.write_text("import torch, torch.nn as nn\n"
                     "def get_model():\n    return nn.Sequential(nn.Linear(256, 256), nn.ReLU()).eval()\n"
                     "def get_inputs():\n    return (torch.randn(64, 256),)\n")
    result, err = _run(model, "--format", "json", "-o", out)
    assert result.exit_code == 0, err
    meta = json.loads(out.read_text())["metadata"]
    assert meta["mode"] == "profile" and meta["profile"] == str(folder / "here.json")
    assert "this machine's profile" in meta["profile_rule"] and "this machine's profile" in err
    monkeypatch.setattr(analyze_cli, "PROFILE_FOLDER", tmp_path / "none")
    result, err = _run(model, "--match-only", "--format", "json", "-o", out)
    assert result.exit_code == 0 and json.loads(out.read_text())["metadata"]["mode"] == "match_only"


def test_without_a_profile_of_this_machine_analyze_measures_live_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(analyze_cli, "PROFILE_FOLDER", tmp_path)
    source, profile = analyze_cli._source("cpu", None, False, "isolated", False, True)
    assert profile is None and source.mode == "measure" and source.regime == "isolated"
    assert source.rule == f"live measurement: no profile calibrated on this machine in {tmp_path}/"
