"""Whose profile is it: a profile measured on another device is never used silently, and this machine's own is found.

A profile is *foreign* to the device a model runs on when
  1. it was measured on another kind of device (a CUDA profile for a model on the CPU, or the reverse), or
  2. its ``metadata.device_name`` is another device's (an A100 profile on an H200, one CPU model on another).
Another host with the same device name is not foreign (the same GPU model decides alike); it is said in a warning.
A foreign profile is an FxFusionError naming both devices unless the caller opts in (``allow_foreign=True``, CLI
``--allow-foreign-profile``); then every report carries a warning.

This machine's profile (:func:`find_machine_profile`, what ``fxfusion analyze`` uses without ``--profile``): among the
``*.json`` profiles of a folder (``profiles/``, where ``fxfusion calibrate`` writes by default), those measured on the
same device kind with the same ``device_name`` -- on a GPU that is all (the shipped H100 and H200 profiles serve every
card of that name, whatever host it sits in; the report says the host differs), on the CPU also the same ``host`` and
thread count, which a virtual CPU's name does not pin down and CPU timings scale with --; the newest by
``metadata.date`` wins.  None: the caller measures live.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from fxfusion.errors import FxFusionError
from fxfusion.measure.devices import kind as device_kind
from fxfusion.measure.hardware import device_name
from fxfusion.profiles.profile import Profile

FOREIGN_FLAG = "allow_foreign=True (CLI: --allow-foreign-profile)"


def _here(device: str | torch.device) -> str:
    try:
        return f"{device_kind(device)} ({device_name(device)})"
    except (AssertionError, RuntimeError):  # a CUDA device on a machine without one: its kind is all there is
        return device_kind(device)


def foreign_reason(profile: Profile, device: str | torch.device, source: str = "the profile") -> str | None:
    """Why ``profile`` is another device's than ``device``, in one line naming both; None when it is this device's."""
    meta = profile.metadata
    there_kind = device_kind(meta.get("device", "cpu"))
    there = f"{there_kind} ({meta.get('device_name') or 'unnamed device'}, host {meta.get('host') or 'unknown'})"
    if there_kind != device_kind(device):
        return f"{source} was measured on {there} but the model runs on {_here(device)}"
    if meta.get("device_name") and meta["device_name"] != device_name(device):
        return f"{source} was measured on {there} but the model runs on {_here(device)}"
    return None


def host_note(profile: Profile, source: str = "the profile") -> str | None:
    """A warning when a profile of this very device model was measured on another host."""
    host = profile.metadata.get("host")
    if host and host != socket.gethostname():
        return (f"{source} was measured on host {host}, this is {socket.gethostname()} (same device model "
                f"{profile.metadata.get('device_name')}): its verdicts are taken as this device's")
    return None


def check_profile(profile: Profile, device: str | torch.device, allow_foreign: bool = False,
                  source: str = "the profile") -> list[str]:
    """The warnings of using ``profile`` for a model on ``device``; an FxFusionError when it is foreign and the
    caller has not opted in."""
    why = foreign_reason(profile, device, source)
    if why and not allow_foreign:
        raise FxFusionError(f"{why}: its verdicts are another device's; calibrate this machine (fxfusion calibrate) "
                            f"or pass {FOREIGN_FLAG} to use them anyway")
    out = [f"{why}; used anyway ({FOREIGN_FLAG}): its decisions may not transfer"] if why else []
    note = host_note(profile, source) if not why else None
    return out + ([note] if note else []) + list(profile.notes)


@dataclass(frozen=True)
class MachineProfile:
    path: Path
    profile: Profile
    rule: str  # why it was chosen, for the report


def _native(profile: Profile, device: str | torch.device) -> bool:
    meta = profile.metadata
    if device_kind(meta.get("device", "cpu")) != device_kind(device) or not profile.entries:
        return False
    if meta.get("device_name") != device_name(device):
        return False
    return device_kind(device) != "cpu" or (meta.get("host") == socket.gethostname()
                                           and meta.get("threads") == torch.get_num_threads())


def find_machine_profile(folder: str | Path, device: str | torch.device) -> MachineProfile | None:
    """This machine's newest calibrated profile in ``folder`` (module doc for the rule); None when there is none."""
    folder = Path(folder)
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            profile = Profile.load(path)
        except FxFusionError:
            continue  # not a profile, or a broken one: not this machine's
        if _native(profile, device):
            found.append((str(profile.metadata.get("date", "")), path, profile))
    if not found:
        return None
    date, path, profile = max(found, key=lambda t: (t[0], str(t[1])))
    meta = profile.metadata
    threads = f", {meta.get('threads')} threads" if device_kind(device) == "cpu" else ""
    rule = (f"{path}: this machine's profile (device {meta.get('device_name')}, host {meta.get('host')}{threads}), "
            f"calibrated {date}" + (f"; newest of {len(found)} that match" if len(found) > 1 else ""))
    return MachineProfile(path, profile, rule)
