"""schema/rules.schema.json: generated from the loader's definitions, accepts every rule file
the project ships, rejects the loader's invalid examples that a JSON Schema can express."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from core.test_loader_errors import CASES

from streams.cli.main import main
from streams.core.loader import load_rules, rule_files
from streams.core.rule_spec import rules_json_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "schema" / "rules.schema.json"
# Every rule file in the repository that the loader accepts.
SHIPPED = [
    *rule_files([ROOT / "rules"]),
    ROOT / "docs" / "examples" / "my-overrides.yaml",
    ROOT / "deploy" / "demo" / "overrides.yaml",
    *sorted((ROOT / "tests" / "fixtures" / "cli-rules").glob("*.yaml")),
]
# Loader errors that need more than the shape of one file (parsing conditions, resolving
# names, comparing items) or that YAML loading itself reports: the schema accepts these files.
LOADER_ONLY = {
    "yaml-indentation",
    "yaml-unclosed-flow",
    "yaml-tab",
    "yaml-unclosed-quote",
    "duplicate-yaml-key",
    "duplicate-yaml-key-nested",
    "unknown-macro",
    "unknown-macro-in-macro",
    "unknown-macro-in-step",
    "unknown-macro-block-scalar",
    "bad-operator",
    "bad-operator-in-step",
    "bad-operator-in-macro",
    "upper-case-keyword",
    "invalid-regex",
    "within-over-7d",
    "within-just-over-7d",
    "duplicate-correlation",
    "duplicate-macro",
}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def errors(validator: jsonschema.Draft7Validator, document: Any) -> list[str]:
    return [error.message for error in validator.iter_errors(document)]


def test_committed_schema_is_what_the_loader_definitions_generate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed) == rules_json_schema()
    assert printed == SCHEMA_FILE.read_text(encoding="utf-8"), (
        "schema/rules.schema.json is stale: "
        "run `falco-correlator schema -o schema/rules.schema.json`"
    )


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_schema_accepts_every_shipped_rule_file(
    validator: jsonschema.Draft7Validator, path: Path
) -> None:
    # the loader accepts it, with what it is loaded with (overrides need the shipped rules)
    if path.parent.name in {"rules", "cli-rules"}:
        load_rules([path.parent])
    else:
        load_rules([ROOT / "rules", path])
    assert errors(validator, yaml.safe_load(path.read_text(encoding="utf-8"))) == []


@pytest.mark.parametrize(
    ("name", "text"), [pytest.param(case[0], case[1], id=case[0]) for case in CASES]
)
def test_schema_rejects_the_loaders_invalid_examples(
    validator: jsonschema.Draft7Validator, name: str, text: str
) -> None:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        assert name in LOADER_ONLY  # not YAML: nothing for a schema to check
        return
    found = errors(validator, document)
    if name in LOADER_ONLY:
        assert found == [], f"the schema now catches {name}: remove it from LOADER_ONLY"
    else:
        assert found, f"the schema accepts the invalid example {name}"


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ({"list": "l", "macro": "m", "items": []}, "Additional properties"),
        ({"desc": "no kind"}, "is not valid under any of the given schemas"),
        (
            {"correlation": "c", "type": "count", "condition": "a = b", "within": "1m"},
            "'threshold' is a required property",
        ),
        (
            {"correlation": "c", "enabled": False, "override": {"enabled": "append"}},
            "is not one of ['replace']",
        ),
        ({"list": "l", "items": [True]}, "is not of type"),
        (
            {
                "correlation": "c",
                "type": "absence",
                "within": "1m",
                "trigger": {"condition": "a"},
                "expect": {"condition": "b", "when": "x"},
            },
            "Additional properties",
        ),
    ],
)
def test_schema_errors_an_editor_shows(
    validator: jsonschema.Draft7Validator, item: dict[str, Any], fragment: str
) -> None:
    assert any(fragment in message for message in errors(validator, [item])), errors(
        validator, [item]
    )


def test_override_items_need_only_their_name_and_what_they_change(
    validator: jsonschema.Draft7Validator,
) -> None:
    items = [
        {
            "correlation": "Shell then outbound connection",
            "within": "30m",
            "override": {"within": "replace"},
        },
        {"list": "shell_binaries", "items": ["fish"], "override": {"items": "append"}},
        {"macro": "in_container", "condition": "and x = y", "override": {"condition": "append"}},
    ]
    assert errors(validator, items) == []


def test_schema_subcommand_writes_a_file(tmp_path: Path) -> None:
    target = tmp_path / "rules.schema.json"
    assert main(["schema", "--output", str(target)]) == 0
    assert json.loads(target.read_text(encoding="utf-8")) == rules_json_schema()
