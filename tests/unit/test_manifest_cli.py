"""``sealpod manifest schema`` and ``sealpod manifest check``, and the published JSON Schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from sealpod.cli import cli
from sealpod.manifest import manifest_json_schema

DATA = Path(__file__).resolve().parents[1] / "data" / "manifests"

BROKEN = """\
version: 1
packages:
  web: {mrenclave: ["%s"]}
services:
  api:
    package: web
    env:
      DB_URL: "postgres://app:{{ secrets.db | raw }}@db/app"
      KEY: "{{ secrets.db_key.cert | pem }}"
    volumes: {data: /data}
secrets:
  db_key: {type: symmetric-key}
""" % ("d" * 64)


def _run(*args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), input=stdin, catch_exceptions=False)


# --- schema ----------------------------------------------------------------------------------


def test_schema_prints_json_schema() -> None:
    result = _run("manifest", "schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"version", "packages"}
    expected_sections = {
        "version",
        "packages",
        "services",
        "secrets",
        "users",
        "roles",
        "volumes",
        "recovery",
        "governance",
        "policy",
    }
    assert set(schema["properties"]) == expected_sections


def test_schema_output_file(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"
    result = _run("manifest", "schema", "-o", str(target))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert json.loads(target.read_text()) == manifest_json_schema()


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = manifest_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", ["issue-example.yaml", "full.yaml", "full-reordered.json"])
def test_example_manifests_conform_to_the_schema(name: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    document = yaml.safe_load((DATA / name).read_text())
    jsonschema.Draft202012Validator(manifest_json_schema()).validate(document)


def test_schema_rejects_what_the_models_reject() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(manifest_json_schema())
    good = yaml.safe_load((DATA / "issue-example.yaml").read_text())
    assert validator.is_valid(good)
    for mutate in (
        lambda d: d.update(extra=1),
        lambda d: d.update(version=2),
        lambda d: d["packages"]["web"].update(mrenclave=["abc"]),
        lambda d: d["services"]["web"]["env"].update({"1X": "x"}),
        lambda d: d["secrets"]["db_key"].update(type="aes"),
        lambda d: d["services"]["web"].update(max_instances=0),
        lambda d: d["services"]["web"]["files"].update({"etc/x": "y"}),
        lambda d: d["users"]["alice"].update(certificate="not a certificate"),
    ):
        bad = yaml.safe_load((DATA / "issue-example.yaml").read_text())
        mutate(bad)
        assert not validator.is_valid(bad)


# --- check -----------------------------------------------------------------------------------


def test_check_valid_manifest_prints_summary_and_exits_0() -> None:
    result = _run("manifest", "check", str(DATA / "full.yaml"))
    assert result.exit_code == 0, result.output
    assert "valid; 2 packages, 2 services, 7 secrets, 3 users; sha256 " in result.stdout


def test_check_valid_manifest_json() -> None:
    result = _run("manifest", "check", "--json", str(DATA / "issue-example.yaml"))
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["valid"] is True
    assert data["errors"] == []
    assert data["services"] == ["web"]
    assert len(data["sha256"]) == 64
    assert {"path": "policy.allow_simulation", "message": data["warnings"][0]["message"]} in data[
        "warnings"
    ]


def test_check_prints_every_error_with_its_path_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    result = _run("manifest", "check", str(path))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert 'error: services.api.env.DB_URL: unknown secret "db"' in lines
    assert 'error: services.api.volumes.data: unknown volume "data"' in lines
    assert (
        'error: services.api.env.KEY: a symmetric-key secret has no attribute or item "cert"'
        in lines
    )
    assert lines[-1] == f"{path}: invalid (3 problems)"


def test_check_json_lists_errors(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    result = _run("manifest", "check", "--json", str(path))
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["valid"] is False
    assert {"path": "services.api.env.DB_URL", "message": 'unknown secret "db"'} in data["errors"]
    assert len(data["errors"]) == 3


def test_check_reads_stdin() -> None:
    result = _run("manifest", "check", "-", stdin=(DATA / "issue-example.yaml").read_text())
    assert result.exit_code == 0
    assert result.stdout.startswith("-: valid;")


def test_check_unparseable_file_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: [1\n")
    result = _run("manifest", "check", str(path))
    assert result.exit_code == 1
    assert "invalid YAML" in result.stdout


def test_check_missing_file_is_one_line_exit_1(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from sealpod.cli import main; main(sys.argv[1:])",
            "manifest",
            "check",
            str(tmp_path / "nope.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: cannot read manifest")
    assert proc.stderr.count("\n") == 1


def test_check_without_file_is_usage_error() -> None:
    result = CliRunner().invoke(cli, ["manifest", "check"])
    assert result.exit_code == 2
