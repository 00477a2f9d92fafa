"""docs/profile-format.md is generated from schemas/profile.schema.json and must match the generator's output."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_profile_format", ROOT / "docs" / "gen_profile_format.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checked_in_doc_matches_the_generator(gen):
    assert (ROOT / "docs" / "profile-format.md").read_text() == gen.render(), \
        "docs/profile-format.md is stale: run python3 docs/gen_profile_format.py"


def test_every_schema_field_has_a_row(gen):
    schema = json.loads((ROOT / "schemas" / "profile.schema.json").read_text())
    doc = gen.render(schema)
    for name in schema["$defs"]["variant"]["properties"]:
        assert f"| `entries[].variants[].{name}` |" in doc
    for name in schema["properties"]["metadata"]["properties"]:
        assert f"| `metadata.{name}` |" in doc


def test_a_new_field_without_a_meaning_fails_the_generator(gen):
    schema = json.loads((ROOT / "schemas" / "profile.schema.json").read_text())
    schema["$defs"]["variant"]["properties"]["new_field"] = {"type": "number"}
    with pytest.raises(SystemExit, match=r"entries\[\]\.variants\[\]\.new_field"):
        gen.render(schema)
    schema["$defs"]["variant"]["properties"]["new_field"]["description"] = "A described field."
    assert "| `entries[].variants[].new_field` | number |  | A described field. |" in gen.render(schema)


def test_check_mode_reports_a_stale_doc(gen, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gen, "OUTPUT", tmp_path / "profile-format.md")
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    (tmp_path / "profile-format.md").write_text("old\n")
    assert gen.main(["--check"]) == 1 and "stale" in capsys.readouterr().err
    (tmp_path / "profile-format.md").write_text(gen.render())
    assert gen.main(["--check"]) == 0
