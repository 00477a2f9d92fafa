"""The journal of a calibration: ``OUTPUT.progress.jsonl``, one finished entry per line, kept until the profile is
written, so an interrupted run loses nothing it finished.

Its first line is a header with the settings the entries were measured under (device, threads, dtypes, size set,
timing rounds, compile variants, ...).  The rules, each so that a finished entry is never lost or mislabelled:
  1. a run without ``resume`` refuses to start over a journal that holds finished entries (it names the file and
     says to pass --resume or delete it);
  2. ``resume`` refuses a journal whose settings differ from this run's, naming the first difference: its entries
     would otherwise be stored as if measured with this run's settings;
  3. reading it back, a last line cut off by an interruption (no newline, not JSON) is dropped, and so is a line
     that is not an entry this version writes (wrong fields): those entries are measured again, and the journal is
     rewritten with what was kept, so the next entry starts on a fresh line;
  4. bytes that are not text at all are refused with one line naming the file and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fxfusion.errors import FxFusionError
from fxfusion.profiles.profile import Entry, entry_from_dict, entry_to_dict
from fxfusion.profiles.schema import atomic_write_text, entry_errors

KIND = "fxfusion.calibration-journal"

# How each setting is named to a user when two runs differ in it.
SETTING_NAMES = {"hardware": "--hardware", "device": "--device", "threads": "--threads", "dtypes": "--dtypes",
                 "patterns": "--patterns", "sizes": "the size set (--quick/--sizes)",
                 "rounds": "the timing rounds (--quick)", "compile_modes": "the compile variants (--no-compile)",
                 "peaks": "the peaks (--peak-gflops/--peak-bandwidth)", "seed": "the seed",
                 "max_shapes": "the shapes per pattern"}


def progress_path(output: Path | None) -> Path | None:
    """The journal of a calibration writing ``output``."""
    return output.with_name(output.name + ".progress.jsonl") if output else None


@dataclass
class JournalRead:
    """What a journal holds: its settings (None: no header), the entries kept, and what was dropped and why."""
    settings: dict | None
    entries: dict[str, Entry] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # one phrase per dropped line

    def summary(self, path: Path) -> str:
        n = len(self.entries)
        text = f"resuming from {path}: {n} finished {'entry' if n == 1 else 'entries'} reused"
        if self.dropped:
            text += f"; dropped {'; '.join(self.dropped)} (measured again)"
        return text


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FxFusionError(f"{path} is not a calibration journal (bytes at offset {exc.start} are not text): delete "
                            "it to start over") from None


def read_journal(path: Path) -> JournalRead:
    """The journal's header and valid entries; a cut-off last line and lines of wrong fields are dropped and said."""
    text = _decode(path)
    lines = text.split("\n")
    tail = lines.pop()  # "" when the file ends with a newline; else a line cut off mid-write
    read = JournalRead(settings=None)
    if tail.strip():
        try:
            lines.append(json.dumps(json.loads(tail)))  # whole JSON, only its newline missing: keep it
        except ValueError:
            read.dropped.append("a last line cut off by an interruption")
    wrong = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            wrong += 1
            continue
        if i == 0 and isinstance(data, dict) and data.get("kind") == KIND:
            read.settings = data.get("settings")
            continue
        if not isinstance(data, dict) or entry_errors(data):
            wrong += 1
            continue
        try:
            entry = entry_from_dict(data)
        except (ValueError, TypeError, KeyError):
            wrong += 1
            continue
        read.entries[entry.key()] = entry
    if wrong:
        read.dropped.append(f"{wrong} line{'s' * (wrong != 1)} that {'are' if wrong != 1 else 'is'} not a finished "
                            "entry")
    return read


def count_entries(path: Path | None) -> int:
    """How many finished entries a journal holds (0 when there is none, or it cannot be read)."""
    if path is None or not path.exists():
        return 0
    try:
        return len(read_journal(path).entries)
    except (FxFusionError, OSError):
        return 0


def _difference(old: dict, new: dict) -> str | None:
    for key, value in new.items():
        if old.get(key) != value:
            name = SETTING_NAMES.get(key, key)
            return f"{name}: {_show(old.get(key))} there, {_show(value)} now"
    return None


def _show(value) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    return "unset" if value is None else str(value)


def _write(path: Path, settings: dict, entries: list[Entry]) -> None:
    lines = [json.dumps({"kind": KIND, "settings": settings})]
    lines += [json.dumps(entry_to_dict(e), allow_nan=False) for e in entries]
    atomic_write_text(path, "\n".join(lines) + "\n")


def open_journal(path: Path, settings: dict, resume: bool) -> JournalRead:
    """Start (or, with ``resume``, continue) the journal at ``path`` for a run with ``settings``; returns the
    entries to reuse.  Raises :class:`FxFusionError` rather than drop or mislabel a finished entry."""
    read = read_journal(path) if path.exists() else JournalRead(settings=settings)
    if not resume:
        if read.entries:
            n = len(read.entries)
            raise FxFusionError(f"{path} holds {n} finished {'entry' if n == 1 else 'entries'} of an earlier run: "
                                "pass --resume to continue it, or delete that file to start over")
        _write(path, settings, [])
        return JournalRead(settings=settings)
    if read.entries or read.settings is not None:
        if read.settings is None:
            raise FxFusionError(f"{path} does not say what settings its entries were measured with (an older "
                                "fxfusion wrote it): delete it to start over")
        diff = _difference(read.settings, settings)
        if diff:
            raise FxFusionError(f"--resume: {path} was measured with other settings ({diff}): run with the same "
                                "options, or delete that file to start over")
    _write(path, settings, list(read.entries.values()))
    return read


def append(path: Path, entry: Entry) -> None:
    """One finished entry, schema-valid, on a line of its own."""
    line = entry_to_dict(entry)
    errors = entry_errors(line)
    if errors:
        raise FxFusionError(f"entry {entry.key()} does not match the profile schema at {errors[0][0]}: "
                            f"{errors[0][1][:200]}")
    with path.open("a") as f:
        f.write(json.dumps(line, allow_nan=False) + "\n")
