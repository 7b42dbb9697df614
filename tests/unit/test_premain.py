"""The sealpod premain (``--tee gramine``) and the Gramine manifest that starts it.

The premain's provisioning is driven with hand-made activation results; activation against a
real coordinator is in ``tests/integration/test_premain_coordinator.py``. Expected Gramine
manifest values come from Gramine's manifest syntax documentation
(``Documentation/manifest-syntax.rst``):
``libos.entrypoint`` is the first executable, ``loader.argv`` its argv, ``loader.env.NAME =
{ passthrough = true }`` passes a host variable, ``fs.mounts`` entries of ``type = "tmpfs"``
are in-enclave memory and of ``type = "encrypted"`` take their key from ``key_name``,
``sgx.remote_attestation = "dcap"`` enables DCAP quotes.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sealpod.coordinator.client import ActivationResult, VolumeKey
from sealpod.errors import (
    ConfigError,
    EnvironmentUnavailableError,
    ManifestError,
    VerificationError,
)
from sealpod.package import EnclaveManifest
from sealpod.package.gramine import GraminePremain, has_premain, render_gramine_manifest
from sealpod.runtime._run_gramine import (
    gramine_launch,
    manifest_starts_premain,
    premain_environment,
)
from sealpod.runtime.premain import (
    PremainPolicy,
    PremainSettings,
    activate_in_enclave,
    provision,
    run_premain,
)

pytestmark = pytest.mark.timeout(60)

PYTHON = "/usr/bin/python3.11"
SEALPOD_PREMAIN = "/usr/lib/python3/dist-packages/sealpod/runtime/premain.py"
SETTINGS = (
    "SEALPOD_COORDINATOR",
    "SEALPOD_COORDINATOR_ROOT",
    "SEALPOD_SERVICE",
    "SEALPOD_INSTANCE",
    "SEALPOD_PCCS_URL",
    "SEALPOD_COLLATERAL_FILE",
    "SEALPOD_LOG_LEVEL",
)


class ExecutedError(Exception):
    """Raised by the fake execve: what would have been executed."""

    def __init__(self, path: str, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(path)
        self.path = path
        self.argv = argv
        self.env = env


def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> None:
    raise ExecutedError(path, argv, env)


def _certificate() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test root")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, cert


KEY, CERT = _certificate()
CERT_PEM = CERT.public_bytes(serialization.Encoding.PEM)


def result(
    files: Mapping[str, bytes] | None = None,
    env: Mapping[str, str] | None = None,
    argv: list[str] | None = None,
    volumes: Mapping[str, VolumeKey] | None = None,
) -> ActivationResult:
    return ActivationResult(
        service="web",
        instance="web-1",
        simulated=True,
        private_key=KEY,
        certificate=CERT,
        certificate_chain=(CERT,),
        trust_bundle=(CERT,),
        root_certificate=CERT,
        files=dict(files or {}),
        env=dict(env or {}),
        argv=argv,
        volumes=dict(volumes or {}),
    )


@pytest.fixture
def enclave(tmp_path: Path) -> Path:
    """A stand-in for the enclave's view: a tmpfs mount, an encrypted mount, and a fake
    /dev/attestation whose keys/ holds the declared key name (as Gramine creates it)."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "data").mkdir()
    keys = tmp_path / "attestation" / "keys"
    keys.mkdir(parents=True)
    (keys / "sealpod_volume_data").write_bytes(b"")
    return tmp_path


def policy_for(root: Path, **overrides: Any) -> PremainPolicy:
    options: dict[str, Any] = {
        "entrypoint": "/app/run",
        "args": ("--port", "8443"),
        "tmpfs": (str(root / "secrets"),),
        "encrypted": {"data": str(root / "data")},
        "attestation_dir": root / "attestation",
    }
    options.update(overrides)
    return PremainPolicy(**options)


def grant(root: Path, key: bytes = b"k" * 16, rollback_protected: bool = False) -> VolumeKey:
    return VolumeKey(mount=str(root / "data"), key=key, rollback_protected=rollback_protected)


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- provisioning


def test_secrets_are_written_into_the_mounts_and_the_application_gets_them(
    enclave: Path,
) -> None:
    policy = policy_for(enclave)
    received = result(
        files={
            str(enclave / "secrets" / "tls" / "key.pem"): b"PRIVATE",
            str(enclave / "data" / "token"): b"TOKEN",
        },
        env={"DB_PASSWORD": "hunter2", "PORT": "9000"},
        volumes={"data": grant(enclave, key=bytes(range(16)))},
    )
    host_env = {"PATH": "/bin", "PORT": "1", "SEALPOD_COORDINATOR": "https://c", "HOME": "/"}
    plan = provision(policy, received, host_env)

    assert (enclave / "secrets" / "tls" / "key.pem").read_bytes() == b"PRIVATE"
    assert (enclave / "data" / "token").read_bytes() == b"TOKEN"
    mode = stat.S_IMODE((enclave / "secrets" / "tls" / "key.pem").stat().st_mode)
    assert mode == 0o400
    # Gramine takes the 16 raw key bytes (pf_key_t) at /dev/attestation/keys/<key_name>.
    assert (enclave / "attestation" / "keys" / "sealpod_volume_data").read_bytes() == bytes(
        range(16)
    )
    assert plan.path == "/app/run"
    assert plan.argv == ("/app/run", "--port", "8443")
    # Received variables win over the manifest's; the premain's own settings are removed.
    assert dict(plan.env) == {
        "PATH": "/bin",
        "PORT": "9000",
        "HOME": "/",
        "DB_PASSWORD": "hunter2",
    }


def test_argv_from_the_coordinator_replaces_the_arguments_but_not_the_entrypoint(
    enclave: Path,
) -> None:
    plan = provision(
        policy_for(enclave),
        result(argv=["/bin/sh", "-c", "evil"], volumes={"data": grant(enclave)}),
        {},
    )
    assert plan.path == "/app/run"
    assert plan.argv == ("/app/run", "-c", "evil")


def test_secret_path_outside_the_mounts_is_refused_and_nothing_is_written(
    enclave: Path,
) -> None:
    received = result(
        files={
            str(enclave / "secrets" / "ok"): b"fine",
            str(enclave / "plain" / "leak"): b"SECRET",
        },
        volumes={"data": grant(enclave)},
    )
    with pytest.raises(VerificationError) as refused:
        provision(policy_for(enclave), received, {})
    assert refused.value.reason == "secret_path_unprotected"
    assert "SECRET" not in str(refused.value)
    assert files_under(enclave) == {"attestation/keys/sealpod_volume_data"}
    assert (enclave / "attestation" / "keys" / "sealpod_volume_data").read_bytes() == b""


@pytest.mark.parametrize(
    "relative",
    ["secrets", "secrets/../plain/x", "secrets/./x", "secrets//x", "secretsX/x", "secrets/"],
)
def test_secret_path_that_only_looks_inside_a_mount_is_refused(
    enclave: Path, relative: str
) -> None:
    received = result(files={f"{enclave}/{relative}": b"S"}, volumes={"data": grant(enclave)})
    with pytest.raises(VerificationError, match="secret_path_unprotected"):
        provision(policy_for(enclave), received, {})
    assert files_under(enclave) == {"attestation/keys/sealpod_volume_data"}


def test_mount_point_itself_is_not_a_place_for_a_secret() -> None:
    policy = PremainPolicy(entrypoint="/app", tmpfs=("/secrets",), encrypted={"d": "/data"})
    assert policy.protected_mount("/secrets") is None
    assert policy.protected_mount("/data") is None
    assert policy.protected_mount("/secrets/a/b") == "/secrets"
    assert policy.protected_mount("/data/x") == "/data"


def test_relative_secret_path_is_refused(enclave: Path) -> None:
    received = result(files={"secrets/x": b"S"}, volumes={"data": grant(enclave)})
    with pytest.raises(VerificationError, match="secret_path_unprotected"):
        provision(policy_for(enclave), received, {})


def test_symlink_inside_a_mount_leading_out_of_it_is_refused(enclave: Path) -> None:
    outside = enclave / "outside"
    outside.mkdir()
    (enclave / "secrets" / "link").symlink_to(outside)
    received = result(
        files={str(enclave / "secrets" / "link" / "x"): b"S"}, volumes={"data": grant(enclave)}
    )
    with pytest.raises(VerificationError, match="secret_path_unprotected"):
        provision(policy_for(enclave), received, {})
    assert not (outside / "x").exists()


def test_volume_without_a_grant_is_refused(enclave: Path) -> None:
    with pytest.raises(VerificationError) as refused:
        provision(policy_for(enclave), result(), {})
    assert refused.value.reason == "volume_not_granted"


def test_volume_granted_at_another_mount_is_refused(enclave: Path) -> None:
    wrong = VolumeKey(mount="/elsewhere", key=b"k" * 16, rollback_protected=False)
    with pytest.raises(VerificationError) as refused:
        provision(policy_for(enclave), result(volumes={"data": wrong}), {})
    assert refused.value.reason == "volume_mount_mismatch"


def test_volume_key_of_the_wrong_size_is_refused(enclave: Path) -> None:
    with pytest.raises(VerificationError, match="malformed_response"):
        provision(policy_for(enclave), result(volumes={"data": grant(enclave, b"k" * 32)}), {})


def test_rollback_protected_volume_is_refused_under_gramine(enclave: Path) -> None:
    received = result(volumes={"data": grant(enclave, rollback_protected=True)})
    with pytest.raises(ConfigError, match="rollback_protected"):
        provision(policy_for(enclave), received, {})
    assert (enclave / "attestation" / "keys" / "sealpod_volume_data").read_bytes() == b""


def test_undeclared_key_name_is_refused(enclave: Path) -> None:
    (enclave / "attestation" / "keys" / "sealpod_volume_data").unlink()
    with pytest.raises(ConfigError, match="Gramine manifest"):
        provision(policy_for(enclave), result(volumes={"data": grant(enclave)}), {})


@pytest.mark.parametrize("env", [{"A=B": "x"}, {"A": "x\x00y"}, {"": "x"}])
def test_malformed_environment_from_the_coordinator_is_refused(
    enclave: Path, env: dict[str, str]
) -> None:
    with pytest.raises(VerificationError, match="malformed_response"):
        provision(policy_for(enclave), result(env=env, volumes={"data": grant(enclave)}), {})


# ---------------------------------------------------------------- policy and settings


def test_policy_from_the_command_line() -> None:
    policy = PremainPolicy.from_options(
        ["/app/run", "a", "--b"], tmpfs=["/secrets"], encrypted=["data=/data", "logs=/var/log"]
    )
    assert policy.entrypoint == "/app/run"
    assert policy.args == ("a", "--b")
    assert policy.encrypted == {"data": "/data", "logs": "/var/log"}
    assert policy.attestation_dir == Path("/dev/attestation")


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ([], {}),
        (["app"], {}),
        (["/app"], {"tmpfs": ["secrets"]}),
        (["/app"], {"tmpfs": ["/"]}),
        (["/app"], {"tmpfs": ["/a/../b"]}),
        (["/app"], {"encrypted": ["/data"]}),
        (["/app"], {"encrypted": ["a b=/data"]}),
        (["/app"], {"encrypted": ["d=/data", "d=/other"]}),
        (["/app"], {"tmpfs": ["/data"], "encrypted": ["d=/data"]}),
        (["/app"], {"coordinator_root_sha256": "AB" * 32}),
        (["/app"], {"coordinator_root_sha256": "ab"}),
    ],
)
def test_malformed_policy_is_refused(command: list[str], options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        PremainPolicy.from_options(command, **options)


@pytest.mark.parametrize(
    "environ",
    [
        {"SEALPOD_COORDINATOR": "http://c:1", "SEALPOD_COORDINATOR_ROOT": "x"},
        {"SEALPOD_COORDINATOR": "https://c:1", "SEALPOD_SERVICE": "web"},
        {"SEALPOD_COORDINATOR": "https://c:1", "SEALPOD_COORDINATOR_ROOT": "x"},
    ],
)
def test_incomplete_coordinator_settings_are_refused(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        PremainSettings.from_environ(environ)


def test_coordinator_root_other_than_the_measured_one_is_refused(tmp_path: Path) -> None:
    policy = PremainPolicy(
        entrypoint="/app", coordinator_root_sha256="00" * 32, attestation_dir=tmp_path / "none"
    )
    settings = PremainSettings(
        coordinator="https://127.0.0.1:1", coordinator_root=CERT_PEM.decode(), service="web"
    )
    with pytest.raises(VerificationError) as refused:
        activate_in_enclave(policy, settings)
    assert refused.value.reason == "coordinator_root_mismatch"


def test_measured_coordinator_root_is_accepted_then_the_device_is_needed(tmp_path: Path) -> None:
    digest = hashlib.sha256(CERT.public_bytes(serialization.Encoding.DER)).hexdigest()
    policy = PremainPolicy(
        entrypoint="/app", coordinator_root_sha256=digest, attestation_dir=tmp_path / "none"
    )
    root_file = tmp_path / "root.pem"
    root_file.write_bytes(CERT_PEM)
    settings = PremainSettings(
        coordinator="https://127.0.0.1:1", coordinator_root=str(root_file), service="web"
    )
    # The pin matches (from a file as well as from PEM text); what fails next is the missing
    # /dev/attestation: nothing was sent anywhere.
    with pytest.raises(EnvironmentUnavailableError, match="attestation"):
        activate_in_enclave(policy, settings)


def test_certificate_appended_to_the_pinned_root_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sealpod.coordinator.client as client

    _, attacker = _certificate()
    device = tmp_path / "attestation"
    device.mkdir()
    for name in ("user_report_data", "quote"):
        (device / name).write_bytes(b"")
    collateral = tmp_path / "collateral.json"
    collateral.write_text("{}")
    seen: list[bytes] = []

    def fake_activate(url: str, root_pem: bytes, *args: Any, **kwargs: Any) -> None:
        seen.append(root_pem)

    monkeypatch.setattr(client, "activate", fake_activate)
    digest = hashlib.sha256(CERT.public_bytes(serialization.Encoding.DER)).hexdigest()
    policy = PremainPolicy(
        entrypoint="/app", coordinator_root_sha256=digest, attestation_dir=device
    )
    both = CERT_PEM + attacker.public_bytes(serialization.Encoding.PEM)
    settings = PremainSettings(
        coordinator="https://c:1",
        coordinator_root=both.decode(),
        service="web",
        instance="i",
        collateral_file=collateral,
    )
    activate_in_enclave(policy, settings)
    assert seen == [CERT_PEM]


def test_coordinator_root_that_is_not_a_certificate_is_refused(tmp_path: Path) -> None:
    policy = PremainPolicy(entrypoint="/app", attestation_dir=tmp_path)
    settings = PremainSettings(
        coordinator="https://127.0.0.1:1",
        coordinator_root="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        service="web",
    )
    with pytest.raises(ConfigError, match="PEM"):
        activate_in_enclave(policy, settings)


def test_without_a_coordinator_the_entrypoint_runs_without_secrets(
    enclave: Path, caplog: pytest.LogCaptureFixture
) -> None:
    environ = {"PATH": "/bin", "SEALPOD_SERVICE": "web", "SEALPOD_LOG_LEVEL": "info"}
    with pytest.raises(ExecutedError) as executed:
        run_premain(policy_for(enclave), environ, execve=fake_execve)
    assert executed.value.path == "/app/run"
    assert executed.value.argv == ["/app/run", "--port", "8443"]
    assert executed.value.env == {"PATH": "/bin"}
    assert "WITHOUT attestation or secrets" in caplog.text
    assert files_under(enclave) == {"attestation/keys/sealpod_volume_data"}


def test_entrypoint_that_cannot_be_executed_is_a_one_line_error(run_cli: Any) -> None:
    code, out, err = run_cli(["premain", "--", "/nonexistent/entrypoint"])
    assert code == 1
    assert out == ""
    lines = [line for line in err.splitlines() if not line.startswith("WARNING")]
    assert lines == ["error: cannot execute /nonexistent/entrypoint: No such file or directory"]


def test_cli_malformed_policy_is_a_one_line_error(run_cli: Any) -> None:
    code, _, err = run_cli(["premain", "--encrypted", "nodata", "--", "/app"])
    assert code == 1
    assert err.strip().splitlines() == ["error: --encrypted 'nodata': expected NAME=PATH"]


def test_cli_without_an_entrypoint_is_a_usage_error(run_cli: Any) -> None:
    code, _, _ = run_cli(["premain"])
    assert code == 2


def test_cli_premain_is_hidden_from_help(run_cli: Any) -> None:
    code, out, _ = run_cli(["--help"])
    assert code == 0
    assert "premain" not in out


# ---------------------------------------------------------------- the Gramine manifest


def enclave_manifest(*, with_sealpod: bool = True, **extra: Any) -> EnclaveManifest:
    files: dict[str, Any] = {
        "/app/run.sh": {"sha256": "11" * 32, "size": 10, "mode": 0o755, "type": "file"},
        PYTHON: {"sha256": "22" * 32, "size": 10, "mode": 0o755, "type": "file"},
        "/usr/bin/python3": {"sha256": "33" * 32, "size": 10, "mode": 0o777, "type": "symlink"},
    }
    if with_sealpod:
        files[SEALPOD_PREMAIN] = {"sha256": "44" * 32, "size": 10, "mode": 0o644, "type": "file"}
    document: dict[str, Any] = {
        "entrypoint": "/app/run.sh",
        "argv": ["run.sh", "--port", "8443"],
        "env": {"PATH": "/usr/bin:/bin", "GREETING": "hi"},
        "trusted_files": files,
        "tmpfs": ["/secrets"],
        "volumes": {"data": "/data"},
        "user": {"uid": 1000, "gid": 1000},
    }
    document.update(extra)
    return EnclaveManifest.from_document(document)


LINKS = {"/usr/bin/python3": PYTHON}


def render(manifest: EnclaveManifest, **options: Any) -> dict[str, Any]:
    return tomllib.loads(render_gramine_manifest(manifest, symlink_targets=LINKS, **options))


def test_gramine_manifest_starts_the_premain_with_the_measured_policy() -> None:
    document = render(enclave_manifest())
    # The first executable is the interpreter, as a trusted regular file (the link resolved).
    assert document["libos"]["entrypoint"] == PYTHON
    assert {"uri": f"file:{PYTHON}", "sha256": "22" * 32} in document["sgx"]["trusted_files"]
    argv = document["loader"]["argv"]
    assert argv[:5] == ["/usr/bin/python3", "-I", "-B", "-m", "sealpod.cli.premain"]
    split = argv.index("--")
    assert argv[split + 1 :] == ["/app/run.sh", "--port", "8443"]
    options = argv[5:split]
    pairs = list(zip(options[::2], options[1::2], strict=True))
    assert sorted(pairs) == [("--encrypted", "data=/data"), ("--tmpfs", "/secrets")]
    # Each path the premain may write to is an in-enclave mount in Gramine's sense.
    mounts = {m["path"]: m for m in document["fs"]["mounts"]}
    assert mounts["/secrets"]["type"] == "tmpfs"
    assert mounts["/data"] == {
        "type": "encrypted",
        "path": "/data",
        "uri": "file:/data",
        "key_name": "sealpod_volume_data",
    }
    assert document["sgx"]["remote_attestation"] == "dcap"


def test_gramine_manifest_passes_through_only_the_premain_settings() -> None:
    env = render(enclave_manifest())["loader"]["env"]
    passthrough = sorted(name for name, value in env.items() if isinstance(value, dict))
    assert passthrough == sorted(SETTINGS)
    assert all(env[name] == {"passthrough": True} for name in passthrough)
    assert {k: v for k, v in env.items() if isinstance(v, str)} == {
        "PATH": "/usr/bin:/bin",
        "GREETING": "hi",
    }
    assert "insecure__use_host_env" not in render(enclave_manifest())["loader"]


def test_premain_parses_the_argv_the_gramine_manifest_gives_it(
    run_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sealpod.cli.premain as cli_premain

    seen: list[PremainPolicy] = []

    def capture(policy: PremainPolicy, environ: Mapping[str, str]) -> None:
        seen.append(policy)

    monkeypatch.setattr(cli_premain, "run_premain", capture)
    digest = "ab" * 32
    argv = render(
        enclave_manifest(),
        premain=GraminePremain(secret_dirs=("/run/keys",), coordinator_root_sha256=digest),
    )["loader"]["argv"]
    code, _, err = run_cli(["premain", *argv[5:]])
    assert (code, err) == (0, "")
    assert seen == [
        PremainPolicy(
            entrypoint="/app/run.sh",
            args=("--port", "8443"),
            tmpfs=("/secrets", "/run/keys"),
            encrypted={"data": "/data"},
            coordinator_root_sha256=digest,
        )
    ]


def test_gramine_manifest_without_sealpod_in_the_image_starts_the_entrypoint() -> None:
    manifest = enclave_manifest(with_sealpod=False)
    assert not has_premain(manifest, symlink_targets=LINKS)
    document = render(manifest)
    assert document["libos"]["entrypoint"] == "/app/run.sh"
    assert document["loader"]["argv"] == ["run.sh", "--port", "8443"]
    assert all(isinstance(v, str) for v in document["loader"]["env"].values())
    assert render_gramine_manifest(manifest, symlink_targets=LINKS) == render_gramine_manifest(
        manifest, symlink_targets=LINKS, premain=None
    )


def test_premain_asked_for_without_sealpod_in_the_image_is_refused() -> None:
    with pytest.raises(ManifestError, match="sealpod installed inside the image"):
        render(enclave_manifest(with_sealpod=False), premain=GraminePremain())


def test_premain_asked_for_without_the_interpreter_is_refused() -> None:
    with pytest.raises(ManifestError, match="Python interpreter"):
        render(enclave_manifest(), premain=GraminePremain(interpreter="/usr/bin/python4"))


def test_secret_dir_covering_a_trusted_file_is_refused() -> None:
    with pytest.raises(ManifestError, match="covers the trusted file"):
        render(enclave_manifest(), premain=GraminePremain(secret_dirs=("/app",)))


def test_secret_dir_on_a_volume_is_refused() -> None:
    with pytest.raises(ManifestError, match="encrypted volume"):
        render(enclave_manifest(), premain=GraminePremain(secret_dirs=("/data",)))


def test_entrypoint_with_a_newline_cannot_inject_manifest_keys() -> None:
    evil = "/app/x\n[sgx.insecure]\nx = 1"
    document = enclave_manifest().model_dump(mode="json")
    document["trusted_files"][evil] = document["trusted_files"].pop("/app/run.sh")
    document["entrypoint"] = evil
    rendered = render(EnclaveManifest.from_document(document))
    assert "insecure" not in rendered["sgx"]
    assert rendered["loader"]["argv"][-3] == evil


def test_secret_dirs_become_tmpfs_mounts() -> None:
    document = render(enclave_manifest(), premain=GraminePremain(secret_dirs=("/run/keys",)))
    assert {"type": "tmpfs", "path": "/run/keys"} in document["fs"]["mounts"]


# ---------------------------------------------------------------- the launcher


def test_launcher_hands_the_premain_its_settings(tmp_path: Path) -> None:
    env = premain_environment(
        coordinator="https://c:4433", coordinator_root_pem=CERT_PEM, service="web", instance="i"
    )
    assert env == {
        "SEALPOD_COORDINATOR": "https://c:4433",
        "SEALPOD_COORDINATOR_ROOT": CERT_PEM.decode(),
        "SEALPOD_SERVICE": "web",
        "SEALPOD_INSTANCE": "i",
    }
    launch = gramine_launch(
        rootfs=tmp_path, work_dir=tmp_path, signing_key=tmp_path / "k", argv=[], premain_env=env
    )
    run = list(launch.run)
    namespace = run[: run.index("--")]
    for name, value in env.items():
        index = namespace.index(name)
        assert namespace[index - 1 : index + 2] == ["--setenv", name, value]


def test_launcher_refuses_a_root_that_is_not_pem() -> None:
    with pytest.raises(ConfigError):
        premain_environment(coordinator="https://c", coordinator_root_pem=b"\x30\x82", service="s")


def test_launcher_tells_whether_the_package_starts_the_premain() -> None:
    with_premain = render_gramine_manifest(enclave_manifest(), symlink_targets=LINKS)
    without = render_gramine_manifest(enclave_manifest(with_sealpod=False), symlink_targets=LINKS)
    assert manifest_starts_premain(with_premain)
    assert not manifest_starts_premain(without)
    with pytest.raises(ConfigError):
        manifest_starts_premain("[loader")


def test_premain_module_runs_under_python_dash_m(tmp_path: Path) -> None:
    """``python3 -I -B -m sealpod.cli.premain`` (as the Gramine manifest starts it) execs."""
    import subprocess
    import sys

    script = tmp_path / "app.sh"
    script.write_text('#!/bin/sh\necho "args=$*" "greeting=$GREETING" "coord=$SEALPOD_SERVICE"\n')
    script.chmod(0o755)
    env = {"PATH": os.environ.get("PATH", "/bin"), "GREETING": "hi", "SEALPOD_SERVICE": "web"}
    done = subprocess.run(
        [sys.executable, "-I", "-B", "-m", "sealpod.cli.premain", "--", str(script), "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "args=x greeting=hi coord="
    assert "WITHOUT attestation or secrets" in done.stderr


def test_sealpod_build_wires_the_premain_when_the_image_has_python_and_sealpod(
    tmp_path: Path,
) -> None:
    from sealpod.image import ImageConfig, rootfs_to_image
    from sealpod.package import build_package, open_package
    from sealpod.sgx import EnclaveSigningKey

    rootfs = tmp_path / "rootfs"
    for name, data in {
        "app/run": b"#!/bin/sh\necho hi\n",
        "usr/bin/python3.11": b"\x7fELF not really",
        SEALPOD_PREMAIN.lstrip("/"): b"# the premain\n",
    }.items():
        (rootfs / name).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / name).write_bytes(data)
    (rootfs / "app/run").chmod(0o755)
    (rootfs / "usr/bin/python3").symlink_to("python3.11")
    config = ImageConfig(entrypoint=("/app/run",), cmd=("--serve",), env=("PATH=/usr/bin",))
    image = rootfs_to_image(rootfs, config, tmp_path / "oci")
    out = tmp_path / "package"
    build_package(f"oci:{image}", out, EnclaveSigningKey.generate(), tmpfs=["/secrets"])

    document = tomllib.loads(open_package(out).gramine_manifest)
    assert document["libos"]["entrypoint"] == "/usr/bin/python3.11"
    argv = document["loader"]["argv"]
    assert argv[3:5] == ["-m", "sealpod.cli.premain"]
    assert argv[argv.index("--") + 1 :] == ["/app/run", "--serve"]
    assert argv[5:7] == ["--tmpfs", "/secrets"]
    digest = hashlib.sha256(b"\x7fELF not really").hexdigest()
    assert {"uri": "file:/usr/bin/python3.11", "sha256": digest} in document["sgx"]["trusted_files"]


def _run_settings(tmp_path: Path, **kwargs: Any) -> Any:
    from sealpod.runtime.run import RunSettings

    return RunSettings(package=tmp_path / "pkg", tee="gramine", **kwargs)


def test_run_tee_gramine_hands_the_coordinator_to_the_premain(tmp_path: Path) -> None:
    from sealpod.runtime.run import gramine_premain_settings

    root = tmp_path / "root.pem"
    root.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    settings = _run_settings(
        tmp_path,
        coordinator="https://coord.example:4433",
        coordinator_root=root,
        service="web",
        instance="web-1",
    )
    text = render_gramine_manifest(enclave_manifest(), symlink_targets=LINKS)
    env = gramine_premain_settings(settings, text)
    assert env == {
        "SEALPOD_COORDINATOR": "https://coord.example:4433",
        "SEALPOD_COORDINATOR_ROOT": root.read_text(),
        "SEALPOD_SERVICE": "web",
        "SEALPOD_INSTANCE": "web-1",
    }
    # Each variable is one the generated manifest passes through to the enclave.
    passthrough = tomllib.loads(text)["loader"]["env"]
    assert all(name in passthrough for name in env)


def test_run_tee_gramine_with_a_coordinator_but_no_premain_is_refused(tmp_path: Path) -> None:
    from sealpod.runtime.run import gramine_premain_settings

    root = tmp_path / "root.pem"
    root.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    settings = _run_settings(
        tmp_path, coordinator="https://coord.example:4433", coordinator_root=root, service="web"
    )
    plain = render_gramine_manifest(enclave_manifest(with_sealpod=False), symlink_targets=LINKS)
    with pytest.raises(ConfigError, match="needs the sealpod premain"):
        gramine_premain_settings(settings, plain)
    assert gramine_premain_settings(_run_settings(tmp_path), plain) is None
