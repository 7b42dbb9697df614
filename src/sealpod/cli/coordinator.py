"""``sealpod coordinator ...``: run the coordinator and show its identity.

``serve`` runs the HTTPS API (its TLS certificate is issued by the coordinator's own root for the
listen address, so clients pin the root after attesting it: ``sealpod verify``). ``identity``
prints the measurement the *simulated* coordinator claims: the MRENCLAVE of the installed
sealpod distribution, reproducible on any machine with the same release.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import re
import signal
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click
import httpx
import platformdirs
from cryptography.hazmat.primitives import hashes
from pydantic import ValidationError

from sealpod.cli._common import HexParam, emit, json_option, read_bytes, write_bytes_atomic
from sealpod.coordinator.identity import (
    COORDINATOR_ISV_PROD_ID,
    SIMULATED_COORDINATOR_MRSIGNER,
    measure_distribution,
)
from sealpod.coordinator.server import CoordinatorServer, parse_listen
from sealpod.coordinator.settings import CoordinatorSettings, default_state_url
from sealpod.errors import ConfigError, NetworkError, SealpodError

_logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


@click.group()
def coordinator() -> None:
    """The coordinator: attested manifest, activation, PKI and audit (HTTPS API)."""


@coordinator.command()
@click.option(
    "--state",
    "state_url",
    envvar="SEALPOD_STATE",
    default=None,
    help="State URL: sqlite:///PATH or postgresql://... "
    "[env SEALPOD_STATE; default: sqlite in the user data dir].",
)
@click.option(
    "--listen",
    envvar="SEALPOD_LISTEN",
    default="127.0.0.1:8443",
    show_default=True,
    help="HOST:PORT to serve HTTPS on [env SEALPOD_LISTEN].",
)
@click.option(
    "--tee",
    type=click.Choice(["simulation", "gramine"]),
    envvar="SEALPOD_TEE",
    default="simulation",
    show_default=True,
    help="Where quotes and sealing keys come from [env SEALPOD_TEE].",
)
@click.option(
    "--sim-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SEALPOD_SIM_DIR",
    default=None,
    help="Simulated platform directory [env SEALPOD_SIM_DIR; default: <user data dir>/sealpod/sim].",
)
@click.option(
    "--server-name",
    "server_names",
    multiple=True,
    envvar="SEALPOD_SERVER_NAMES",
    help="Extra DNS name or IP address for the TLS certificate (repeatable).",
)
@click.option(
    "--nonce-ttl",
    type=click.FloatRange(min=1, max=3600),
    envvar="SEALPOD_NONCE_TTL",
    default=120.0,
    show_default=True,
    help="Seconds an activation nonce stays valid [env SEALPOD_NONCE_TTL].",
)
@click.option(
    "--pccs-url",
    envvar="SEALPOD_PCCS_URL",
    default=None,
    help="PCCS (PCS API v4) for collateral services do not send [env SEALPOD_PCCS_URL].",
)
@click.option(
    "--pccs-ca-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="SEALPOD_PCCS_CA_FILE",
    default=None,
    help="CA bundle for the PCCS's TLS certificate [env SEALPOD_PCCS_CA_FILE].",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    envvar="SEALPOD_LOG_FORMAT",
    default="text",
    show_default=True,
    help="Log lines on stderr as text or as one JSON object each [env SEALPOD_LOG_FORMAT].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=64),
    envvar="SEALPOD_WORKERS",
    default=None,
    help="Serving processes sharing the port; one per CPU for throughput [env SEALPOD_WORKERS; default 1].",
)
def serve(
    state_url: str | None,
    listen: str,
    tee: str,
    sim_dir: Path | None,
    server_names: tuple[str, ...],
    nonce_ttl: float,
    pccs_url: str | None,
    pccs_ca_file: Path | None,
    log_format: str,
    workers: int | None,
) -> None:
    """Serve the coordinator API over HTTPS until interrupted."""
    if log_format == "json":
        _use_json_logs()
    host, port = parse_listen(listen)
    try:
        settings = CoordinatorSettings(
            state_url=state_url or default_state_url(),
            tee="gramine" if tee == "gramine" else "simulation",
            sim_dir=sim_dir,
            nonce_ttl=nonce_ttl,
            pccs_url=pccs_url,
            pccs_ca_file=pccs_ca_file,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{where}: {first['msg']}") from exc
    server = CoordinatorServer.build(
        settings,
        host=host,
        port=port,
        server_names_extra=server_names,
        workers=workers,
    )
    status = server.coordinator.status()
    click.echo(
        f"sealpod coordinator on https://{listen} (state {status['state']}, "
        f"simulated: {str(status['simulated']).lower()})",
        err=True,
    )
    recovery = status.get("recovery")
    if recovery is not None:
        fingerprint = server.credentials.certificate.fingerprint(hashes.SHA256()).hex()
        click.echo(
            f"RECOVERY: the sealed state needs {recovery['threshold']} recovery share(s); "
            f"ephemeral TLS certificate SHA-256: {fingerprint}",
            err=True,
        )
    else:
        root = server.coordinator.ca.root_certificate
        click.echo(f"root certificate SHA-256: {root.fingerprint(hashes.SHA256()).hex()}", err=True)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it with the previous handler
    # installed: make that a clean exit (status 0) rather than death by signal.
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    server.run()
    click.echo("coordinator stopped", err=True)


class JSONLogFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def _use_json_logs() -> None:
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(JSONLogFormatter())


def _exit_after_shutdown(_signum: int, _frame: FrameType | None) -> None:
    click.echo("coordinator stopped", err=True)
    sys.exit(0)


@coordinator.command()
@click.option(
    "--package-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    envvar="SEALPOD_PACKAGE_DIR",
    default=None,
    help="Measure this sealpod package directory instead of the installed one.",
)
@click.option("--files", "show_files", is_flag=True, help="Also list the measured files.")
@json_option
def identity(package_dir: Path | None, show_files: bool, as_json: bool) -> None:
    """Print the simulated coordinator's enclave identity (MRENCLAVE of this release)."""
    measurement = measure_distribution(package_dir)
    data: dict[str, object] = {
        "mrenclave": measurement.mr_enclave.hex(),
        "mrsigner": SIMULATED_COORDINATOR_MRSIGNER.hex(),
        "isv_prod_id": COORDINATOR_ISV_PROD_ID,
        "isv_svn": 0,
        "simulated": True,
        "package_dir": str(measurement.root),
        "file_count": len(measurement.files),
    }
    if show_files:
        data["files"] = [{"path": path, "sha256": digest} for path, digest in measurement.files]

    def human() -> None:
        for key in ("mrenclave", "mrsigner", "isv_prod_id", "simulated", "package_dir"):
            value = data[key]
            click.echo(f"{key}: {str(value).lower() if isinstance(value, bool) else value}")
        click.echo(f"files measured: {len(measurement.files)}")
        if show_files:
            for path, digest in measurement.files:
                click.echo(f"  {digest}  {path}")

    emit(data, as_json, human)


# == client commands (issue 3 §4) ==============================================================
#
# These are top-level commands (``sealpod verify``, ``sealpod status``, ...): register them in
# sealpod/cli/__init__.py. Every command after ``verify`` talks TLS pinned to the root that
# ``verify`` saved (or to ``--coordinator-root``).

coordinator_option = click.option(
    "--coordinator",
    "url",
    envvar="SEALPOD_COORDINATOR",
    required=True,
    help="Coordinator URL, https://HOST:PORT [env SEALPOD_COORDINATOR].",
)
root_option = click.option(
    "--coordinator-root",
    "root_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SEALPOD_COORDINATOR_ROOT",
    default=None,
    help="Pinned root certificate (PEM) to use instead of the one `sealpod verify` saved "
    "[env SEALPOD_COORDINATOR_ROOT].",
)
user_options = [
    click.option(
        "--user-cert",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        envvar="SEALPOD_USER_CERT",
        default=None,
        help="Your certificate or public key (PEM) as in the manifest [env SEALPOD_USER_CERT].",
    ),
    click.option(
        "--user-key",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        envvar="SEALPOD_USER_KEY",
        required=True,
        help="Your private key (PEM, unencrypted) [env SEALPOD_USER_KEY].",
    ),
]
expectation_options = [
    click.option(
        "--expect-mrenclave",
        type=HexParam(32),
        envvar="SEALPOD_EXPECT_MRENCLAVE",
        default=None,
        help="The coordinator's expected MRENCLAVE [env SEALPOD_EXPECT_MRENCLAVE].",
    ),
    click.option(
        "--expect",
        "expect_file",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        default=None,
        help="JSON with a 'mrenclave' (e.g. `sealpod coordinator identity --json`).",
    ),
    click.option(
        "--allow-simulation",
        is_flag=True,
        envvar="SEALPOD_ALLOW_SIMULATION",
        help="Accept a SIMULATED coordinator (INSECURE) [env SEALPOD_ALLOW_SIMULATION].",
    ),
    click.option(
        "--sim-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="SEALPOD_SIM_DIR",
        default=None,
        help="Simulated platform whose root a simulated coordinator's quote chains to.",
    ),
    click.option(
        "--pccs-url",
        envvar="SEALPOD_PCCS_URL",
        default=None,
        help="PCCS for collateral when the coordinator sends none [env SEALPOD_PCCS_URL].",
    ),
]


def _apply(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def decorate(function: F) -> F:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


_PEM_CERT_RE = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
_PEM_KEY_RE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S
)


def _share_bytes(raw: bytes) -> bytes:
    """An encrypted share given raw, or as the base64 text the API returns."""
    text = raw.strip()
    if re.fullmatch(rb"[A-Za-z0-9+/=\s]+", text):
        try:
            return base64.b64decode(text, validate=False)
        except ValueError:
            pass
    return raw


def pinned_root_path(url: str) -> Path:
    """Where ``sealpod verify`` keeps the pinned root of the coordinator at ``url``."""
    netloc = urllib.parse.urlsplit(url).netloc or url
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", netloc)
    return Path(platformdirs.user_config_dir("sealpod")) / "coordinators" / f"{safe}.pem"


def _root_pem(url: str, root_file: Path | None) -> bytes:
    path = root_file if root_file is not None else pinned_root_path(url)
    if root_file is None and not path.is_file():
        raise ConfigError(
            f"no pinned root for {url}: run `sealpod verify --coordinator {url}` first "
            "(or give --coordinator-root)"
        )
    return read_bytes(path, "coordinator root")


def _expected_mrenclave(expect_mrenclave: bytes | None, expect_file: Path | None) -> bytes | None:
    if expect_file is None:
        return expect_mrenclave
    if expect_mrenclave is not None:
        raise click.UsageError("give --expect-mrenclave or --expect, not both")
    try:
        document = json.loads(read_bytes(expect_file, "expectation file"))
        value = bytes.fromhex(str(document["mrenclave"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{expect_file}: expected JSON with a 64-hex-digit 'mrenclave'") from exc
    if len(value) != 32:
        raise ConfigError(f"{expect_file}: 'mrenclave' must be 32 bytes")
    return value


def _attest(
    url: str,
    expect_mrenclave: bytes | None,
    expect_file: Path | None,
    allow_simulation: bool,
    sim_dir: Path | None,
    pccs_url: str | None,
) -> Any:
    from sealpod.coordinator.client import verify_coordinator
    from sealpod.tee import SimulatedPlatform, default_platform_dir

    expected = _expected_mrenclave(expect_mrenclave, expect_file)
    if expected is None and not allow_simulation:
        raise click.UsageError("give --expect-mrenclave HEX or --expect FILE")
    simulated_root = None
    if allow_simulation:
        directory = sim_dir if sim_dir is not None else default_platform_dir()
        if directory.is_dir():
            simulated_root = SimulatedPlatform.load(directory).root_certificate_der()
    return verify_coordinator(
        url,
        expect_mrenclave=expected,
        allow_simulation=allow_simulation,
        simulated_root_der=simulated_root,
        pccs_url=pccs_url,
    )


def _user(url: str, root_pem: bytes, user_cert: Path | None, user_key: Path) -> tuple[str, Any]:
    """The manifest user whose key ``user_key`` is (matched in the signed manifest)."""
    from cryptography.hazmat.primitives import serialization

    from sealpod.coordinator.auth import user_public_key
    from sealpod.coordinator.client import fetch_manifest
    from sealpod.manifest import User
    from sealpod.pki import public_key_der

    try:
        key = serialization.load_pem_private_key(read_bytes(user_key, "user key"), None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{user_key}: not an unencrypted PEM private key") from exc
    if user_cert is not None:
        read_bytes(user_cert, "user certificate")  # the key decides; the file must exist
    mine = public_key_der(key.public_key())
    signed = fetch_manifest(url, root_pem)
    for name, document in dict(signed.manifest.get("users") or {}).items():
        try:
            theirs = public_key_der(user_public_key(User.model_validate(document)))
        except SealpodError:
            continue
        if theirs == mine:
            return str(name), key
    raise ConfigError("your key is not the key of any user in the coordinator's manifest")


@click.command("verify")
@coordinator_option
@_apply(expectation_options)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the pinned root here (default: the user config dir, used by later commands).",
)
@json_option
def verify_command(
    url: str,
    expect_mrenclave: bytes | None,
    expect_file: Path | None,
    allow_simulation: bool,
    sim_dir: Path | None,
    pccs_url: str | None,
    out: Path | None,
    as_json: bool,
) -> None:
    """Attest the coordinator and pin its root certificate for later commands."""
    verified = _attest(url, expect_mrenclave, expect_file, allow_simulation, sim_dir, pccs_url)
    target = out if out is not None else pinned_root_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(target, verified.root_pem)
    evidence = verified.evidence
    emit(
        {
            "coordinator": verified.url,
            "verified": True,
            "simulated": verified.simulated,
            "mrenclave": evidence.mr_enclave.hex() if evidence.mr_enclave else None,
            "mrsigner": evidence.mr_signer.hex() if evidence.mr_signer else None,
            "tcb_status": evidence.status,
            "root_sha256": verified.root_certificate.fingerprint(hashes.SHA256()).hex(),
            "pinned_root": str(target),
        },
        as_json,
    )


@click.command("status")
@coordinator_option
@root_option
@json_option
def status_command(url: str, root_file: Path | None, as_json: bool) -> None:
    """The coordinator's state (over TLS pinned to its root)."""
    from sealpod.coordinator.client import coordinator_status

    emit(coordinator_status(url, _root_pem(url, root_file)), as_json)


@click.command("activate")
@coordinator_option
@root_option
@click.option(
    "--service",
    envvar="SEALPOD_SERVICE",
    required=True,
    help="The manifest's service name [env SEALPOD_SERVICE].",
)
@click.option(
    "--instance",
    envvar="SEALPOD_INSTANCE",
    required=True,
    help="This instance's id [env SEALPOD_INSTANCE].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory to write what the coordinator releases (files, env, argv, certificate).",
)
@click.option(
    "--package",
    "package_path",
    type=click.Path(exists=True, path_type=Path),
    envvar="SEALPOD_PACKAGE",
    default=None,
    help="Claim this confidential package's identity (simulation).",
)
@click.option(
    "--mrenclave",
    type=HexParam(32),
    envvar="SEALPOD_MRENCLAVE",
    default=None,
    help="Claimed MRENCLAVE [env SEALPOD_MRENCLAVE].",
)
@click.option(
    "--mrsigner",
    type=HexParam(32),
    envvar="SEALPOD_MRSIGNER",
    default=None,
    help="Claimed MRSIGNER [env SEALPOD_MRSIGNER].",
)
@click.option(
    "--isv-prod-id",
    type=click.IntRange(0, 0xFFFF),
    envvar="SEALPOD_ISV_PROD_ID",
    default=0,
    show_default=True,
)
@click.option(
    "--isv-svn",
    type=click.IntRange(0, 0xFFFF),
    envvar="SEALPOD_ISV_SVN",
    default=0,
    show_default=True,
)
@click.option(
    "--sim-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SEALPOD_SIM_DIR",
    default=None,
    help="Simulated platform to quote with [env SEALPOD_SIM_DIR].",
)
@json_option
def activate_command(
    url: str,
    root_file: Path | None,
    service: str,
    instance: str,
    out: Path,
    package_path: Path | None,
    mrenclave: bytes | None,
    mrsigner: bytes | None,
    isv_prod_id: int,
    isv_svn: int,
    sim_dir: Path | None,
    as_json: bool,
) -> None:
    """Activate a service instance with the simulated TEE and write what it receives."""
    from sealpod.coordinator.client import activate
    from sealpod.tee import EnclaveIdentity, SimulatedPlatform, SimulationBackend
    from sealpod.tee import default_platform_dir as platform_dir

    if package_path is not None:
        if mrenclave is not None or mrsigner is not None:
            raise click.UsageError("give --package or --mrenclave/--mrsigner, not both")
        from sealpod.package import open_package, verify_package

        info = verify_package(open_package(package_path))
        identity = EnclaveIdentity(
            mr_enclave=bytes.fromhex(info.mrenclave),
            mr_signer=bytes.fromhex(info.mrsigner),
            isv_prod_id=info.isv_prod_id,
            isv_svn=info.isv_svn,
            debug=info.debug,
        )
    else:
        if mrenclave is None:
            raise click.UsageError("give --package or --mrenclave")
        identity = EnclaveIdentity(
            mr_enclave=mrenclave,
            mr_signer=mrsigner if mrsigner is not None else bytes(32),
            isv_prod_id=isv_prod_id,
            isv_svn=isv_svn,
        )
    platform = SimulatedPlatform.load(sim_dir if sim_dir is not None else platform_dir())
    result = activate(
        url, _root_pem(url, root_file), service, instance, SimulationBackend(platform, identity)
    )
    written = _write_activation(out, result)
    emit(
        {
            "service": result.service,
            "instance": result.instance,
            "simulated": result.simulated,
            "certificate_subject": result.certificate.subject.rfc4514_string(),
            "files": sorted(result.files),
            "env": sorted(result.env),
            "volumes": sorted(result.volumes),
            "written": written,
        },
        as_json,
    )


def _write_activation(out: Path, result: Any) -> list[str]:
    from sealpod.pki import certificates_to_pem

    written: list[str] = []

    def put(relative: str, data: bytes, mode: int = 0o600) -> None:
        path = out / relative
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"cannot create {path.parent}: {exc.strerror or exc}") from exc
        write_bytes_atomic(path, data, mode)
        written.append(str(path))

    for name, content in result.files.items():
        put("files/" + name.lstrip("/"), content)
    put("env.json", json.dumps(result.env, indent=2, sort_keys=True).encode() + b"\n")
    if result.argv is not None:
        put("argv.json", json.dumps(result.argv).encode() + b"\n")
    put("certificate.pem", certificates_to_pem(result.certificate_chain), 0o644)
    put("trust-bundle.pem", certificates_to_pem(result.trust_bundle), 0o644)
    put("root.pem", certificates_to_pem((result.root_certificate,)), 0o644)
    put("key.pem", result.private_key_pem())
    for name, grant in result.volumes.items():
        put(f"volumes/{name}.key", grant.key)
    return written


@click.group("secret")
def secret_group() -> None:
    """Set or read user-defined secrets (signed with your key; role-checked)."""


@secret_group.command("set")
@coordinator_option
@root_option
@_apply(user_options)
@click.argument("name")
@click.option("--value", default=None, help="The value (text).")
@click.option(
    "--from-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Read the value (bytes) from this file; for certificate secrets, a PEM file holding "
    "the certificate chain and the private key.",
)
def secret_set(
    url: str,
    root_file: Path | None,
    user_cert: Path | None,
    user_key: Path,
    name: str,
    value: str | None,
    from_file: Path | None,
) -> None:
    """Set user-defined secret NAME."""
    from sealpod.coordinator.client import set_secret

    if (value is None) == (from_file is None):
        raise click.UsageError("give exactly one of --value and --from-file")
    root_pem = _root_pem(url, root_file)
    user, key = _user(url, root_pem, user_cert, user_key)
    data = value.encode() if value is not None else read_bytes(from_file or Path(), "value")
    text = data.decode("ascii", "replace")
    certificates = _PEM_CERT_RE.findall(text)
    private_keys = _PEM_KEY_RE.findall(text)
    if certificates and private_keys:
        set_secret(
            url,
            root_pem,
            name,
            user=user,
            key=key,
            certificate_pem="".join(block + "\n" for block in certificates),
            private_key_pem=private_keys[0] + "\n",
        )
    else:
        set_secret(url, root_pem, name, user=user, key=key, value=data)
    click.echo(f"secret {name} set by {user}", err=True)


@secret_group.command("get")
@coordinator_option
@root_option
@_apply(user_options)
@click.argument("name")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the value here (mode 0600) instead of stdout.",
)
@json_option
def secret_get(
    url: str,
    root_file: Path | None,
    user_cert: Path | None,
    user_key: Path,
    name: str,
    out: Path | None,
    as_json: bool,
) -> None:
    """Read secret NAME (role read)."""
    from sealpod.coordinator.client import get_secret

    root_pem = _root_pem(url, root_file)
    user, key = _user(url, root_pem, user_cert, user_key)
    secret = get_secret(url, root_pem, name, user=user, key=key)
    if secret.value is not None:
        data = secret.value
    else:
        data = ((secret.certificate_pem or "") + (secret.private_key_pem or "")).encode()
    if out is not None:
        write_bytes_atomic(out, data, 0o600)
        return
    if as_json:
        emit({"name": name, "type": secret.type, "value_base64": base64.b64encode(data).decode()},
             True)  # fmt: skip
        return
    click.echo(data.decode("utf-8", "replace"), nl=False)


@click.group("audit")
def audit_group() -> None:
    """The coordinator's hash-chained audit log."""


@audit_group.command("show")
@coordinator_option
@root_option
@click.option("--last", type=click.IntRange(min=1), default=None, help="Only the last N entries.")
@json_option
def audit_show(url: str, root_file: Path | None, last: int | None, as_json: bool) -> None:
    """Print the audit log (its chain is checked first)."""
    from sealpod.coordinator.client import fetch_audit

    entries, _ = fetch_audit(url, _root_pem(url, root_file))
    shown = entries[-last:] if last else entries
    if as_json:
        click.echo(json.dumps([entry.to_dict() for entry in shown], indent=2))
        return
    for entry in shown:
        event = dict(entry.event)
        kind = event.pop("type", "?")
        details = " ".join(f"{key}={value}" for key, value in sorted(event.items()))
        click.echo(f"{entry.seq:6d} {entry.time} {kind} {details}")


@audit_group.command("verify")
@coordinator_option
@root_option
@json_option
def audit_verify(url: str, root_file: Path | None, as_json: bool) -> None:
    """Check the whole audit log's hash chain against its sealed head."""
    from sealpod.coordinator.client import fetch_audit

    entries, head = fetch_audit(url, _root_pem(url, root_file))
    emit(
        {
            "verified": True,
            "entries": len(entries),
            "head": head.hash if head is not None else None,
        },
        as_json,
    )


@click.group("certificate")
def certificate_group() -> None:
    """The coordinator's certificates."""


@certificate_group.command("root")
@coordinator_option
@root_option
def certificate_root(url: str, root_file: Path | None) -> None:
    """Print the pinned root certificate (PEM)."""
    click.echo(_root_pem(url, root_file).decode("ascii"), nl=False)


@certificate_group.command("chain")
@coordinator_option
@root_option
def certificate_chain(url: str, root_file: Path | None) -> None:
    """Print the root and the mesh intermediates (PEM), fetched over pinned TLS."""
    from sealpod.coordinator.client import coordinator_certificate_chain

    click.echo(coordinator_certificate_chain(url, _root_pem(url, root_file)), nl=False)


@click.command("recover")
@coordinator_option
@_apply(expectation_options)
@click.option(
    "--share",
    "share_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="Your encrypted recovery share (as returned when the manifest was set).",
)
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="Your RSA recovery private key (PEM, unencrypted).",
)
@json_option
def recover_command(
    url: str,
    expect_mrenclave: bytes | None,
    expect_file: Path | None,
    allow_simulation: bool,
    sim_dir: Path | None,
    pccs_url: str | None,
    share_file: Path,
    key_file: Path,
    as_json: bool,
) -> None:
    """Attest a coordinator in recovery and give it your decrypted share."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from sealpod.coordinator.client import submit_recovery_share
    from sealpod.store import decrypt_recovery_share

    try:
        key = serialization.load_pem_private_key(read_bytes(key_file, "recovery key"), None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key_file}: not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{key_file}: recovery keys are RSA keys")
    share = decrypt_recovery_share(_share_bytes(read_bytes(share_file, "recovery share")), key)
    verified = _attest(url, expect_mrenclave, expect_file, allow_simulation, sim_dir, pccs_url)
    emit(submit_recovery_share(url, verified.root_pem, share), as_json)


# -- manifest commands talking to a coordinator (to attach to ``sealpod manifest``) -------------


@click.command("set")
@coordinator_option
@root_option
@click.argument("manifest_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--shares-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write each recovery key's encrypted share to DIR/NAME.share (they are shown once).",
)
@json_option
def manifest_set(
    url: str, root_file: Path | None, manifest_file: Path, shares_dir: Path | None, as_json: bool
) -> None:
    """Set the coordinator's (first) manifest."""
    from sealpod.coordinator.client import pinned_client

    document = read_bytes(manifest_file, "manifest")
    content_type = "application/json" if document.lstrip().startswith(b"{") else "application/yaml"
    try:
        with pinned_client(url, _root_pem(url, root_file)) as client:
            response = client.post(
                "/api/v1/manifest", content=document, headers={"content-type": content_type}
            )
    except httpx.HTTPError as exc:
        raise NetworkError(f"cannot reach the coordinator at {url}: {exc}") from exc
    body = _checked_json(response)
    shares = dict(body.get("recovery_shares") or {})
    written = []
    if shares and shares_dir is not None:
        shares_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name, share in shares.items():
            path = shares_dir / f"{name}.share"
            write_bytes_atomic(path, str(share).encode() + b"\n", 0o600)
            written.append(str(path))
    emit(
        {
            "manifest_sha256": body.get("manifest_sha256"),
            "recovery_shares": written if shares_dir is not None else shares,
        },
        as_json,
    )


def _checked_json(response: httpx.Response) -> dict[str, Any]:
    from sealpod.coordinator.client import response_json

    return response_json(response)


@click.command("get")
@coordinator_option
@root_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def manifest_get(url: str, root_file: Path | None, out: Path | None) -> None:
    """Print the coordinator's manifest (canonical JSON, signature checked against the root)."""
    from sealpod.coordinator.client import fetch_manifest

    signed = fetch_manifest(url, _root_pem(url, root_file))
    if out is not None:
        write_bytes_atomic(out, signed.canonical + b"\n")
        return
    click.echo(signed.canonical.decode("utf-8"))


@click.command("verify")
@coordinator_option
@root_option
@click.argument("manifest_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@json_option
def manifest_verify(url: str, root_file: Path | None, manifest_file: Path, as_json: bool) -> None:
    """Check that the coordinator enforces exactly MANIFEST_FILE (by its signed digest)."""
    from sealpod.coordinator.client import fetch_manifest
    from sealpod.errors import VerificationError
    from sealpod.manifest import load_manifest, manifest_digest

    local = manifest_digest(load_manifest(manifest_file))
    signed = fetch_manifest(url, _root_pem(url, root_file))
    if signed.sha256 != local:
        raise VerificationError(
            "manifest_mismatch",
            f"the coordinator enforces {signed.sha256.hex()}, {manifest_file} is {local.hex()}",
        )
    emit({"verified": True, "manifest_sha256": local.hex()}, as_json)


@click.group("update")
def manifest_update() -> None:
    """Manifest updates: propose, approve, cancel, list (M-of-N approval)."""


def _update_fields(update: Any) -> dict[str, Any]:
    return {
        "id": update.id,
        "manifest_sha256": update.manifest_sha256.hex(),
        "proposer": update.proposer,
        "approvals": list(update.approvals),
        "threshold": update.threshold,
        "applied": update.applied,
    }


@manifest_update.command("propose")
@coordinator_option
@root_option
@_apply(user_options)
@click.argument("manifest_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@json_option
def update_propose(
    url: str,
    root_file: Path | None,
    user_cert: Path | None,
    user_key: Path,
    manifest_file: Path,
    as_json: bool,
) -> None:
    """Propose MANIFEST_FILE as the next manifest (counts as your approval)."""
    from sealpod.coordinator.client import propose_update

    root_pem = _root_pem(url, root_file)
    user, key = _user(url, root_pem, user_cert, user_key)
    document = read_bytes(manifest_file, "manifest")
    emit(_update_fields(propose_update(url, root_pem, document, user=user, key=key)), as_json)


@manifest_update.command("approve")
@coordinator_option
@root_option
@_apply(user_options)
@click.argument("update_id")
@json_option
def update_approve(
    url: str,
    root_file: Path | None,
    user_cert: Path | None,
    user_key: Path,
    update_id: str,
    as_json: bool,
) -> None:
    """Approve the pending update UPDATE_ID."""
    from sealpod.coordinator.client import approve_update

    root_pem = _root_pem(url, root_file)
    user, key = _user(url, root_pem, user_cert, user_key)
    emit(_update_fields(approve_update(url, root_pem, update_id, user=user, key=key)), as_json)


@manifest_update.command("cancel")
@coordinator_option
@root_option
@_apply(user_options)
@click.argument("update_id")
def update_cancel(
    url: str, root_file: Path | None, user_cert: Path | None, user_key: Path, update_id: str
) -> None:
    """Withdraw the pending update UPDATE_ID."""
    from sealpod.coordinator.client import cancel_update

    root_pem = _root_pem(url, root_file)
    user, key = _user(url, root_pem, user_cert, user_key)
    cancel_update(url, root_pem, update_id, user=user, key=key)
    click.echo(f"update {update_id} cancelled", err=True)


@manifest_update.command("list")
@coordinator_option
@root_option
@json_option
def update_list(url: str, root_file: Path | None, as_json: bool) -> None:
    """Show the pending update, if any."""
    from sealpod.coordinator.client import pinned_client

    try:
        with pinned_client(url, _root_pem(url, root_file)) as client:
            body = _checked_json(client.get("/api/v1/manifest/updates"))
    except httpx.HTTPError as exc:
        raise NetworkError(f"cannot reach the coordinator at {url}: {exc}") from exc
    pending = body.get("pending")
    if as_json or pending is None:
        emit({"pending": pending}, as_json)
        return
    emit(dict(pending), False)


#: The commands above that belong under ``sealpod manifest`` (``manifest.add_command(c)``).
MANIFEST_CLIENT_COMMANDS: tuple[click.Command, ...] = (
    manifest_set,
    manifest_get,
    manifest_verify,
    manifest_update,
)
