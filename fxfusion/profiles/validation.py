"""Checking a file fxfusion wrote (a profile, an analysis report or a comparison) against its schema, every error with
its path.

The file's ``"kind"`` says which schema applies.  A profile that passes its schema is also loaded into a
:class:`~fxfusion.profiles.profile.Profile`, so a file that the schema lets through but the library cannot read is still
reported as invalid (at ``$``).  A comparison that passes its schema is also checked against itself (flip flags
against the two verdicts, summary counts against the lists), each disagreement at its JSON path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fxfusion.errors import FxFusionError
from fxfusion.profiles.schema import read_json, schema_errors
from fxfusion.profiles.profile import Profile
from fxfusion.profiles.compare import inconsistencies

KINDS = {"fxfusion.profile": "profile", "fxfusion.analysis": "analysis",  # "kind" field -> schema name
         "fxfusion.comparison": "comparison"}
MAX_MESSAGE = 300  # jsonschema quotes whole sub-documents in some messages; a line a person can read is enough


def schema_kind(data: Any, path: str | Path) -> str:
    """The schema name ("profile", "analysis" or "comparison") for a document, from its "kind" field."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in KINDS:
        found = f"kind {kind!r}" if kind is not None else "no \"kind\" field"
        raise FxFusionError(f"{path} has {found}; expected one of: {', '.join(KINDS)}")
    return KINDS[kind]


@dataclass
class ValidationResult:
    path: str
    schema: str  # "profile" | "analysis" | "comparison"
    errors: list[tuple[str, str]] = field(default_factory=list)  # (JSON path, message), in document order
    summary: str = ""  # what a valid file holds, e.g. "12 entries"

    @property
    def valid(self) -> bool:
        return not self.errors


def _summary(data: dict, schema: str) -> str:
    if schema == "profile":
        return f"{len(data.get('entries', []))} entries, hardware {data.get('metadata', {}).get('hardware')}"
    if schema == "comparison":
        s = data["summary"]
        return (f"{s['matched']} entries in both, {s['verdict_flips']} verdict flips, "
                f"{s['best_variant_flips']} best-variant flips")
    return f"{len(data.get('sites', []))} sites, model {data.get('metadata', {}).get('model')}"


def validate_document(data: Any, path: str | Path) -> ValidationResult:
    schema = schema_kind(data, path)
    errors = [(p, m if len(m) <= MAX_MESSAGE else m[:MAX_MESSAGE] + "...") for p, m in schema_errors(data, schema)]
    if not errors and schema == "profile":
        try:
            Profile.from_dict(data, source=str(path))
        except (FxFusionError, TypeError, KeyError, ValueError) as exc:
            errors.append(("$", f"matches the schema but does not load as a profile: {exc}"))
    if not errors and schema == "comparison":
        errors = inconsistencies(data)
    return ValidationResult(path=str(path), schema=schema, errors=errors,
                            summary="" if errors else _summary(data, schema))


def load_profile(path: str | Path):
    """Profile.load, with a file the schema lets through but the dataclasses reject also reported in one line."""
    try:
        return Profile.load(path)
    except (TypeError, KeyError, ValueError) as exc:
        raise FxFusionError(f"{path} matches the profile schema but does not load as a profile: {exc}") from None


def validate_file(path: str | Path) -> ValidationResult:
    """Raises FxFusionError only when the file cannot be checked at all (missing, not JSON, unknown kind)."""
    return validate_document(read_json(path), path)
