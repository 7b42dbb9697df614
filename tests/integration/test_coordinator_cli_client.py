"""The client commands (``sealpod verify``, ``status``, ``activate``, ``secret``, ``audit``,
``certificate``, ``manifest set|get|verify|update``) against the real HTTPS coordinator of
test_coordinator_server.py, invoked through click's test runner."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from test_coordinator_server import (
    ALICE_KEY,
    WEB_MRENCLAVE,
    Running,
    _manifest,
    running_coordinator,
)

from sealpod.cli import coordinator as cli
from sealpod.coordinator import coordinator_identity
from sealpod.errors import ConfigError, VerificationError
from sealpod.tee import SimulatedPlatform

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    platform = SimulatedPlatform.init(tmp_path_factory.mktemp("sim") / "platform")
    with running_coordinator(
        tmp_path_factory.mktemp("coordinator"), platform, _manifest(allow_simulation=True)
    ) as running:
        yield running


def _run(command: click.Command, *args: str) -> Result:
    return CliRunner().invoke(command, list(args), catch_exceptions=True)


def _ok(result: Result) -> Any:
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.output) if result.output.lstrip().startswith(("{", "[")) else None


@pytest.fixture
def root_file(coordinator: Running, tmp_path: Path) -> Path:
    path = tmp_path / "root.pem"
    data = _ok(
        _run(
            cli.verify_command,
            "--coordinator", coordinator.url,
            "--expect-mrenclave", coordinator_identity().mr_enclave.hex(),
            "--allow-simulation",
            "--sim-dir", str(coordinator.platform.directory),
            "--out", str(path),
            "--json",
        )
    )  # fmt: skip
    assert data["verified"] is True and data["simulated"] is True
    assert path.read_bytes() == coordinator.root_pem
    return path


@pytest.fixture
def alice_key(tmp_path: Path) -> Path:
    path = tmp_path / "alice.key"
    path.write_bytes(
        ALICE_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def test_verify_refuses_a_coordinator_with_another_measurement(coordinator: Running) -> None:
    result = _run(
        cli.verify_command,
        "--coordinator", coordinator.url,
        "--expect-mrenclave", "ab" * 32,
        "--allow-simulation",
        "--sim-dir", str(coordinator.platform.directory),
        "--out", "/dev/null",
    )  # fmt: skip
    assert isinstance(result.exception, VerificationError)
    assert result.exception.reason == "mrenclave_mismatch"


def test_status_and_certificates_over_the_pinned_root(
    coordinator: Running, root_file: Path
) -> None:
    common = ["--coordinator", coordinator.url, "--coordinator-root", str(root_file)]
    assert _ok(_run(cli.status_command, *common, "--json"))["state"] == "accepting-services"
    root = _run(cli.certificate_group, "root", *common)
    assert root.output.encode() == coordinator.root_pem
    chain = _run(cli.certificate_group, "chain", *common)
    assert chain.output.count("BEGIN CERTIFICATE") >= 2


def test_commands_without_a_pinned_root_explain_what_to_do(coordinator: Running) -> None:
    result = _run(cli.status_command, "--coordinator", "https://unpinned.example:1")
    assert isinstance(result.exception, ConfigError)
    assert "sealpod verify" in str(result.exception)


def test_activate_writes_what_the_instance_receives(
    coordinator: Running, root_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "released"
    data = _ok(
        _run(
            cli.activate_command,
            "--coordinator", coordinator.url,
            "--coordinator-root", str(root_file),
            "--service", "cli",
            "--instance", "cli-0",
            "--mrenclave", WEB_MRENCLAVE.hex(),
            "--sim-dir", str(coordinator.platform.directory),
            "--out", str(out),
            "--json",
        )
    )  # fmt: skip
    assert data["simulated"] is True
    assert (out / "files/etc/cli.conf").read_text() == "instance=cli-0\n"
    env = json.loads((out / "env.json").read_text())
    assert len(bytes.fromhex(env["DB_KEY"])) == 32
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), None)
    from cryptography import x509

    leaf = x509.load_pem_x509_certificates((out / "certificate.pem").read_bytes())[0]
    assert leaf.public_key() == key.public_key()


def test_secret_set_and_get_with_the_users_key(
    coordinator: Running, root_file: Path, alice_key: Path
) -> None:
    common = [
        "--coordinator", coordinator.url,
        "--coordinator-root", str(root_file),
        "--user-key", str(alice_key),
    ]  # fmt: skip
    _ok(_run(cli.secret_group, "set", *common, "api_token", "--value", "from-the-cli"))
    result = _run(cli.secret_group, "get", *common, "api_token")
    assert result.exit_code == 0, result.exception
    assert result.output == "from-the-cli"


def test_audit_and_manifest_commands(coordinator: Running, root_file: Path, tmp_path: Path) -> None:
    common = ["--coordinator", coordinator.url, "--coordinator-root", str(root_file)]
    verified = _ok(_run(cli.audit_group, "verify", *common, "--json"))
    assert verified["verified"] is True and verified["entries"] > 3
    shown = _run(cli.audit_group, "show", *common, "--last", "2")
    assert len(shown.output.splitlines()) == 2

    got = _run(cli.manifest_get, *common)
    assert json.loads(got.output)["services"]["web"]["max_instances"] == 3
    same = tmp_path / "same.json"
    same.write_text(json.dumps(_manifest(allow_simulation=True)))
    assert _ok(_run(cli.manifest_verify, *common, str(same), "--json"))["verified"] is True
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_manifest(allow_simulation=False)))
    mismatch = _run(cli.manifest_verify, *common, str(other))
    assert isinstance(mismatch.exception, VerificationError)
    assert mismatch.exception.reason == "manifest_mismatch"
    assert _ok(_run(cli.update_list, *common, "--json")) == {"pending": None}
