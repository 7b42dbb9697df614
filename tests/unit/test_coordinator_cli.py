"""``sealpod coordinator`` commands (the group is imported directly until it is registered)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from sealpod.cli.coordinator import coordinator
from sealpod.errors import ConfigError, EnvironmentUnavailableError


def test_identity_json_is_marked_simulated() -> None:
    result = CliRunner().invoke(coordinator, ["identity", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert len(bytes.fromhex(data["mrenclave"])) == 32
    assert data["simulated"] is True
    assert data["file_count"] > 10


def test_identity_lists_the_measured_files(tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text("x = 1\n")
    runner = CliRunner()
    installed = json.loads(runner.invoke(coordinator, ["identity", "--json"]).output)
    result = runner.invoke(
        coordinator, ["identity", "--json", "--files", "--package-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    other = json.loads(result.output)
    assert other["mrenclave"] != installed["mrenclave"]
    # sha256 of "x = 1\n", computed with sha256sum.
    digest = "9e26bf369911c45c243c684147b23fc9e1dcfcf257d299a1c632016a6fcd33f4"
    assert other["files"] == [{"path": "__init__.py", "sha256": digest}]


def test_identity_human_output() -> None:
    result = CliRunner().invoke(coordinator, ["identity"])
    assert result.exit_code == 0
    assert "mrenclave: " in result.output
    assert "simulated: true" in result.output


def test_serve_with_a_bad_listen_address_is_a_config_error() -> None:
    result = CliRunner().invoke(coordinator, ["serve", "--listen", "nowhere"])
    assert isinstance(result.exception, ConfigError)
    assert "HOST:PORT" in str(result.exception)


def test_serve_without_a_simulated_platform_is_an_environment_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        coordinator,
        [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state",
            f"sqlite:///{tmp_path}/state.db",
            "--sim-dir",
            str(tmp_path / "missing"),
        ],
    )
    assert isinstance(result.exception, EnvironmentUnavailableError)
    assert result.exception.exit_code == 3


def test_unknown_tee_is_a_usage_error() -> None:
    result = CliRunner().invoke(coordinator, ["serve", "--tee", "sev"])
    assert result.exit_code == 2


def test_json_log_lines_are_json_objects() -> None:
    import logging

    from sealpod.cli.coordinator import JSONLogFormatter

    record = logging.LogRecord("sealpod.x", logging.WARNING, __file__, 1, "a %s", ("b",), None)
    document = json.loads(JSONLogFormatter().format(record))
    assert document["level"] == "WARNING"
    assert document["logger"] == "sealpod.x"
    assert document["message"] == "a b"
    assert document["time"].endswith("+00:00")


def test_bad_pccs_url_is_a_config_error() -> None:
    result = CliRunner().invoke(coordinator, ["serve", "--pccs-url", "ftp://pccs"])
    assert isinstance(result.exception, ConfigError)
    assert "pccs_url" in str(result.exception)
