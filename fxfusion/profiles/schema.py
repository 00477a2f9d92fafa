"""The JSON Schemas in schemas/ are the contract for every file fxfusion writes; this module applies them.

Also the one place files are written: atomically (temporary file in the same folder, fsync, rename), so an error or
Ctrl-C never leaves a half-written file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from fxfusion.errors import FxFusionError

# 1.1: profiles hold two timing regimes (isolated, pipelined) and noise records; analyses name their regime.  Every
# schema accepts 1.0 files too: older profiles load (with a note that they hold one regime), older reports validate.
SCHEMA_VERSION = "1.1"
SCHEMAS = {"profile": "profile.schema.json", "analysis": "analysis.schema.json",
           "comparison": "comparison.schema.json", "plan": "plan.schema.json"}


def _schema_dir() -> Path:
    # Installed: fxfusion/_schemas (package data); from a checkout: <repo>/schemas.
    packaged = resources.files("fxfusion") / "_schemas"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "schemas"


@lru_cache(maxsize=None)
def load_schema(kind: str) -> dict[str, Any]:
    if kind not in SCHEMAS:
        raise FxFusionError(f"unknown schema {kind!r}; known: {', '.join(SCHEMAS)}")
    return json.loads((_schema_dir() / SCHEMAS[kind]).read_text())


@lru_cache(maxsize=None)
def _validator(kind: str, ref: str | None = None):
    """A compiled validator for a schema, or for one of its $defs (``ref``); built once per process."""
    import jsonschema

    schema = load_schema(kind)
    if ref is not None:
        schema = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{ref}"}
    return jsonschema.Draft202012Validator(schema)


def _errors(validator, data: Any) -> list[tuple[str, str]]:
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    return [(e.json_path, e.message) for e in errors]


def schema_errors(data: Any, kind: str) -> list[tuple[str, str]]:
    """Every violation as (JSON path, message), in document order."""
    return _errors(_validator(kind), data)


def entry_errors(entry: Any) -> list[tuple[str, str]]:
    """Violations of one profile entry (a line of a calibration's progress journal) against the profile schema."""
    return _errors(_validator("profile", "entry"), entry)


def validate(data: Any, kind: str, source: str = "data") -> None:
    errors = schema_errors(data, kind)
    if errors:
        path, message = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise FxFusionError(f"{source} does not match the {kind} schema at {path}: {message[:200]}{more}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | Path) -> Path:
    """Fail now, with one line naming ``path``, if it cannot be written later: its folder is missing, is not a
    folder, or refuses new files (a read-only or virtual file system such as /proc), or ``path`` is a folder.

    The probe creates and removes a temporary file in the folder, as :func:`atomic_write_text` will; commands call
    this before minutes of measurement, not after."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise FxFusionError(f"cannot write {path}: it is a folder")
    if not folder.exists():
        raise FxFusionError(f"cannot write {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise FxFusionError(f"cannot write {path}: folder {folder} does not exist (that name is a file)")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise FxFusionError(f"cannot write {path}: folder {folder} does not take new files "
                            f"({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FxFusionError(f"cannot write {path}: folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise FxFusionError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report or profile should be readable like any file
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise FxFusionError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    return path


def json_text(data: Any) -> str:
    """How every JSON file fxfusion writes is laid out; NaN and infinity are refused (the schemas want numbers)."""
    return json.dumps(data, indent=1, allow_nan=False) + "\n"


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json_text(data))


def read_json(path: str | Path, what: str = "") -> Any:
    """A JSON file's contents; a missing, unreadable, truncated or corrupt file is one FxFusionError naming it
    (``what`` -- "profile", "plan" -- says what the file should have been)."""
    return _read(path, what)[0]


def _read(path: str | Path, what: str) -> tuple[Any, str]:
    path = Path(path)
    named = f"{what} {path}" if what else str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FxFusionError(f"{named} does not exist") from None
    except IsADirectoryError:
        raise FxFusionError(f"{path} is a folder, not a JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FxFusionError(f"cannot read {named}: {exc}") from None
    try:
        return json.loads(text), text
    except json.JSONDecodeError as exc:
        raise FxFusionError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
                            + (f"; is it a truncated or corrupt {what}?" if what else "")) from None


# Documents that passed their schema in this process, by the digest of their text and schema: the same bytes give the
# same verdict, and validating the shipped H200 profile takes 5-20 s on a 2-core machine (every test reading it).
_VALID: set[tuple[str, str]] = set()


def read_document(path: str | Path, kind: str, what: str, schema: str | None = None) -> dict:
    """:func:`read_json` of a document the project writes, checked to be of ``kind`` ("fxfusion.profile", ...) and,
    with ``schema``, valid against it (a file whose very text was validated before in this process is not again)."""
    data, text = _read(path, what)
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise FxFusionError(f"{path} is not an fxfusion {what} (no \"kind\": \"{kind}\")")
    if schema is not None:
        key = (hashlib.sha1(text.encode()).hexdigest(), schema)
        if key not in _VALID:
            validate(data, schema, source=str(path))
            _VALID.add(key)
    return data
