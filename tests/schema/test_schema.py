"""Checks the JSON Schema of tether.yaml against the examples and the known-bad declarations.

Run from anywhere:  python3 -m pytest tests/schema
Needs: jsonschema, pyyaml, pytest.

Files in tests/schema/good/ are valid declarations that use every field and every
alternative form, so that a schema change which wrongly rejects valid input is caught.

Each file in tests/schema/bad/ starts with a line `# rejects: JSON_PATH` naming where the
schema reports its one mistake (as jsonschema's `json_path`, e.g. `$.sidecars.cache.lifecycle`).
The test checks that the file is rejected there and nowhere unrelated, so a bad file cannot
pass by failing for a reason nobody meant.
"""

import json
import re
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

REPO = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO / "crates" / "spec" / "schema.json"
EXAMPLES = sorted(REPO.glob("examples/*/tether.yaml"))
GOOD = sorted((Path(__file__).resolve().parent / "good").glob("*.yaml"))
BAD_DIR = Path(__file__).resolve().parent / "bad"
BAD = sorted(p for p in BAD_DIR.iterdir() if p.is_file())


def load_schema():
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validator():
    return Draft202012Validator(load_schema())


def load_yaml(path):
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def describe(errors):
    return "\n".join(f"  {e.json_path}: {e.message}" for e in errors)


def related(path, expected):
    """True when `path` is `expected`, or one is an ancestor of the other."""
    def within(child, parent):
        return child == parent or (
            child.startswith(parent) and child[len(parent)] in ".["
        )
    return within(path, expected) or within(expected, path)


def test_schema_is_a_valid_draft_2020_12_schema():
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "https://tether.dev/schema/tether.schema.json"
    assert schema["title"]


def test_every_property_has_a_description():
    """Editors show `description` as help; a property without one is a gap.

    Fields are declared by the object schemas that close themselves with
    `additionalProperties: false`; the `properties` inside if/then branches only
    constrain fields declared there, so they are not checked.
    """
    missing = []

    def walk(node, where):
        if isinstance(node, dict):
            declared = node.get("properties", {}) if node.get("additionalProperties") is False else {}
            for name, sub in declared.items():
                if sub is False:  # a field forbidden in this branch
                    continue
                if not isinstance(sub, dict) or "description" not in sub:
                    missing.append(f"{where}/properties/{name}")
            for key, sub in node.items():
                walk(sub, f"{where}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}/{i}")

    walk(load_schema(), "#")
    assert not missing, "properties without a description:\n" + "\n".join(missing)


def test_there_are_examples_and_bad_files():
    assert len(EXAMPLES) >= 3, f"expected at least 3 examples, found {EXAMPLES}"
    assert GOOD, "expected valid declarations in tests/schema/good/"
    assert len(BAD) >= 4, f"expected at least 4 bad declarations in {BAD_DIR}, found {BAD}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_example_is_accepted(path):
    errors = list(validator().iter_errors(load_yaml(path)))
    assert not errors, f"{path.relative_to(REPO)} should validate:\n{describe(errors)}"


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_valid_declaration_is_accepted(path):
    errors = list(validator().iter_errors(load_yaml(path)))
    assert not errors, f"{path.relative_to(REPO)} should validate:\n{describe(errors)}"


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_declaration_is_rejected_where_expected(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    m = re.fullmatch(r"# rejects: (\$\S*)", first)
    assert m, f"{path.name} must start with '# rejects: JSON_PATH'"
    expected = m.group(1)

    errors = list(validator().iter_errors(load_yaml(path)))
    assert errors, f"{path.name} should be rejected at {expected}, but it validates"
    paths = {e.json_path for e in errors}
    assert expected in paths, (
        f"{path.name}: expected an error at {expected}, got:\n{describe(errors)}"
    )
    unrelated = [e for e in errors if not related(e.json_path, expected)]
    assert not unrelated, (
        f"{path.name}: errors away from {expected} (the file should be wrong in one way):\n"
        f"{describe(unrelated)}"
    )
