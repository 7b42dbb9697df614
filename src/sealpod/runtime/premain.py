"""The sealpod premain: the first program inside a Gramine-SGX enclave (``--tee gramine``).

The package's Gramine manifest starts the premain instead of the application
(:func:`sealpod.package.gramine.render_gramine_manifest`); the premain then

1. reads its *policy* from its own command line, which is ``loader.argv`` of the Gramine
   manifest and therefore measured into MRENCLAVE: the application's entrypoint and arguments,
   the in-enclave ``tmpfs`` mounts and the ``encrypted`` mounts (volume name -> path), and
   optionally the SHA-256 of the coordinator root it must be pinned to;
2. reads its *settings* from the environment, which the host chooses (Gramine passes through
   only the names in :data:`PREMAIN_SETTINGS`): ``SEALPOD_COORDINATOR`` (URL),
   ``SEALPOD_COORDINATOR_ROOT`` (PEM text or a file), ``SEALPOD_SERVICE``, ``SEALPOD_INSTANCE``,
   ``SEALPOD_PCCS_URL`` and, for tests, ``SEALPOD_COLLATERAL_FILE``;
3. activates at the coordinator through :class:`~sealpod.tee.GramineBackend`: the key pair is
   made in this process (inside the enclave) and the quote read from ``/dev/attestation`` binds
   it (:func:`sealpod.coordinator.client.activate`); collateral comes from a PCCS;
4. refuses, before writing anything, a received file whose path is not strictly inside one of
   the policy's tmpfs or encrypted mounts (anything else would be a host file in plaintext),
   and an encrypted volume whose grant does not match the policy;
5. writes each volume key to ``/dev/attestation/keys/<key_name>`` (Gramine's key provisioning
   for ``fs.mounts`` of ``type = "encrypted"``), then the received files;
6. ``execve``\\ s the measured entrypoint with the received environment over its own (minus the
   premain settings) and the received argv, if any (argv[0] stays the entrypoint). Gramine runs
   ``execve`` inside the same enclave, so tmpfs files and provisioned keys stay in place.

Without ``SEALPOD_COORDINATOR`` the premain execs the entrypoint at once and logs that it runs
without attestation or secrets.

The host controls the settings, so it can point the premain at a coordinator of its own; that
coordinator cannot learn anything (it only receives a quote and a public key), but it could
hand the application configuration of its choosing. The measured ``coordinator_root_sha256``
closes that: with it the premain refuses any other root. Without it the premain logs a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from sealpod.errors import ConfigError, VerificationError
from sealpod.package._rules import VOLUME_NAME, is_normal_path, is_under

if TYPE_CHECKING:
    from sealpod.coordinator.client import ActivationResult
    from sealpod.tee import TEEBackend

__all__ = [
    "DEFAULT_ATTESTATION_DIR",
    "PREMAIN_SETTINGS",
    "VOLUME_KEY_PREFIX",
    "ExecPlan",
    "PremainPolicy",
    "PremainSettings",
    "activate_in_enclave",
    "plan_without_activation",
    "provision",
    "run_premain",
    "volume_key_name",
]

_logger = logging.getLogger(__name__)

#: Gramine's attestation pseudo-filesystem.
DEFAULT_ATTESTATION_DIR: Final = "/dev/attestation"
#: The environment variables the premain reads; the Gramine manifest passes exactly these
#: through from the host, and the premain removes them before starting the application.
PREMAIN_SETTINGS: Final = (
    "SEALPOD_COORDINATOR",
    "SEALPOD_COORDINATOR_ROOT",
    "SEALPOD_SERVICE",
    "SEALPOD_INSTANCE",
    "SEALPOD_PCCS_URL",
    "SEALPOD_COLLATERAL_FILE",
    "SEALPOD_LOG_LEVEL",
)
#: Prefix of the Gramine ``key_name`` of an encrypted volume's mount.
VOLUME_KEY_PREFIX: Final = "sealpod_volume_"
#: Gramine's encrypted-files keys are 128-bit (``pf_key_t``).
_GRAMINE_KEY_SIZE: Final = 16
_SECRET_FILE_MODE: Final = 0o400

Exec = Callable[[str, list[str], dict[str, str]], Any]


def volume_key_name(name: str) -> str:
    """The Gramine ``key_name`` of the encrypted volume called ``name``."""
    return f"{VOLUME_KEY_PREFIX}{name}"


def _check_mount(path: str, what: str) -> str:
    if not is_normal_path(path) or path == "/":
        raise ConfigError(f"{what}: {path!r} is not an absolute, normalised path below /")
    return path


@dataclass(frozen=True, kw_only=True)
class PremainPolicy:
    """What the measured command line says: the program to start and where secrets may go."""

    #: The measured executable (argv[0] of the application is always this path).
    entrypoint: str
    #: The application's arguments after argv[0].
    args: tuple[str, ...] = ()
    #: In-enclave tmpfs mounts (Gramine ``type = "tmpfs"``).
    tmpfs: tuple[str, ...] = ()
    #: Encrypted volume name -> mount path (Gramine ``type = "encrypted"``).
    encrypted: Mapping[str, str] = field(default_factory=dict)
    #: SHA-256 (hex) of the coordinator root certificate's DER the premain must be pinned to.
    coordinator_root_sha256: str | None = None
    #: Gramine's ``/dev/attestation`` (another directory only in tests).
    attestation_dir: Path = Path(DEFAULT_ATTESTATION_DIR)

    def __post_init__(self) -> None:
        if not self.entrypoint.startswith("/") or "\x00" in self.entrypoint:
            raise ConfigError(f"entrypoint {self.entrypoint!r} is not an absolute path")
        if any("\x00" in arg for arg in self.args):
            raise ConfigError("the application's arguments must not contain NUL bytes")
        for path in self.tmpfs:
            _check_mount(path, "--tmpfs")
        for name, path in self.encrypted.items():
            if not VOLUME_NAME.fullmatch(name):
                raise ConfigError(f"--encrypted: {name!r} is not a valid volume name")
            _check_mount(path, f"--encrypted {name}")
        mounts = [*self.tmpfs, *self.encrypted.values()]
        if len(set(mounts)) != len(mounts):
            raise ConfigError("a mount path is listed twice")
        pin = self.coordinator_root_sha256
        if pin is not None and (len(pin) != 64 or pin.strip("0123456789abcdef")):
            raise ConfigError("--coordinator-root-sha256 must be 64 lowercase hex digits")

    @classmethod
    def from_options(
        cls,
        command: Sequence[str],
        *,
        tmpfs: Sequence[str] = (),
        encrypted: Sequence[str] = (),
        coordinator_root_sha256: str | None = None,
        attestation_dir: str | os.PathLike[str] = DEFAULT_ATTESTATION_DIR,
    ) -> PremainPolicy:
        """The policy from the command line: ``command`` is ``ENTRYPOINT [ARG...]`` and each
        ``encrypted`` item ``NAME=PATH``.

        Raises:
            ConfigError: no entrypoint, a malformed ``NAME=PATH``, a path that is not absolute
                and normalised, a volume named twice or a malformed root hash.
        """
        if not command:
            raise ConfigError("premain: no entrypoint given (premain [OPTIONS] -- ENTRYPOINT ...)")
        volumes: dict[str, str] = {}
        for item in encrypted:
            name, sep, path = item.partition("=")
            if not sep:
                raise ConfigError(f"--encrypted {item!r}: expected NAME=PATH")
            if name in volumes:
                raise ConfigError(f"--encrypted: volume {name!r} is listed twice")
            volumes[name] = path
        return cls(
            entrypoint=command[0],
            args=tuple(command[1:]),
            tmpfs=tuple(tmpfs),
            encrypted=volumes,
            coordinator_root_sha256=coordinator_root_sha256,
            attestation_dir=Path(attestation_dir),
        )

    def protected_mount(self, path: str) -> str | None:
        """The tmpfs or encrypted mount ``path`` lies strictly inside, if any."""
        if not is_normal_path(path) or path == "/":
            return None
        for mount in (*self.tmpfs, *self.encrypted.values()):
            if path != mount and is_under(path, mount):
                return mount
        return None


@dataclass(frozen=True, kw_only=True)
class PremainSettings:
    """What the host chose (the environment): where the coordinator is and who we are."""

    coordinator: str | None = None
    coordinator_root: str | None = None
    service: str | None = None
    instance: str | None = None
    pccs_url: str | None = None
    collateral_file: Path | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> PremainSettings:
        """Read the ``SEALPOD_*`` settings (empty values count as unset).

        Raises:
            ConfigError: a coordinator without a root or a service, or not an https:// URL.
        """

        def get(name: str) -> str | None:
            return environ.get(name) or None

        collateral = get("SEALPOD_COLLATERAL_FILE")
        settings = cls(
            coordinator=get("SEALPOD_COORDINATOR"),
            coordinator_root=get("SEALPOD_COORDINATOR_ROOT"),
            service=get("SEALPOD_SERVICE"),
            instance=get("SEALPOD_INSTANCE"),
            pccs_url=get("SEALPOD_PCCS_URL"),
            collateral_file=None if collateral is None else Path(collateral),
        )
        if settings.coordinator is not None:
            if not settings.coordinator.startswith("https://"):
                raise ConfigError(
                    f"SEALPOD_COORDINATOR {settings.coordinator!r} must be an https:// URL"
                )
            if settings.coordinator_root is None:
                raise ConfigError(
                    "SEALPOD_COORDINATOR needs SEALPOD_COORDINATOR_ROOT (the pinned root, PEM)"
                )
            if settings.service is None:
                raise ConfigError("SEALPOD_COORDINATOR needs SEALPOD_SERVICE")
        return settings


@dataclass(frozen=True)
class ExecPlan:
    """The ``execve`` the premain ends with. ``env`` may hold secrets: never in ``repr``."""

    path: str
    argv: tuple[str, ...] = field(repr=False)
    env: Mapping[str, str] = field(repr=False)


def _application_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in environ.items() if name not in PREMAIN_SETTINGS}


def plan_without_activation(policy: PremainPolicy, environ: Mapping[str, str]) -> ExecPlan:
    """The application with the manifest's environment only (no coordinator configured)."""
    _logger.warning(
        "no SEALPOD_COORDINATOR: starting %s WITHOUT attestation or secrets%s",
        policy.entrypoint,
        (
            "; the encrypted mount(s) "
            + ", ".join(sorted(policy.encrypted.values()))
            + " get no key and cannot be opened"
        )
        if policy.encrypted
        else "",
    )
    return ExecPlan(
        path=policy.entrypoint,
        argv=(policy.entrypoint, *policy.args),
        env=_application_env(environ),
    )


def _root_pem(settings: PremainSettings, policy: PremainPolicy) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    value = settings.coordinator_root or ""
    if value.lstrip().startswith("-----BEGIN"):
        pem = value.encode("ascii", errors="replace")
    else:
        try:
            pem = Path(value).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read SEALPOD_COORDINATOR_ROOT {value}: {exc.strerror or exc}"
            ) from exc
    try:
        root = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ConfigError("SEALPOD_COORDINATOR_ROOT is not a PEM certificate") from exc
    digest = hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()
    if policy.coordinator_root_sha256 is None:
        _logger.warning(
            "the coordinator root (SHA-256 %s) comes from the host and is not measured; "
            "pin it in the package with coordinator_root_sha256",
            digest,
        )
    elif digest != policy.coordinator_root_sha256:
        raise VerificationError(
            "coordinator_root_mismatch",
            f"SEALPOD_COORDINATOR_ROOT has SHA-256 {digest}; the package is pinned to "
            f"{policy.coordinator_root_sha256}",
        )
    # Only the one certificate checked above is trusted: text around it, or a second
    # certificate appended by the host, must not reach the TLS trust store.
    return root.public_bytes(serialization.Encoding.PEM)


def _collateral(settings: PremainSettings, backend: TEEBackend) -> Mapping[str, Any]:
    """The platform's collateral (dcap-qvl JSON form); the coordinator verifies it."""
    if settings.collateral_file is not None:
        try:
            document = json.loads(settings.collateral_file.read_bytes())
        except OSError as exc:
            raise ConfigError(
                f"cannot read SEALPOD_COLLATERAL_FILE {settings.collateral_file}: "
                f"{exc.strerror or exc}"
            ) from exc
        except ValueError as exc:
            raise ConfigError("SEALPOD_COLLATERAL_FILE is not JSON") from exc
        if not isinstance(document, dict):
            raise ConfigError("SEALPOD_COLLATERAL_FILE is not a JSON object")
        return document
    if settings.pccs_url is not None:
        from sealpod.attestation.pccs import PCCSClient

        # The collateral is the platform's (FMSPC and CA from the PCK certificate), so a quote
        # over zero report data tells which one to fetch.
        quote = backend.quote(bytes(64))
        with PCCSClient(settings.pccs_url) as pccs:
            return pccs.collateral_for_quote(quote).to_mapping()
    raise ConfigError(
        "no collateral source: set SEALPOD_PCCS_URL (a PCCS reachable from the enclave)"
    )


def activate_in_enclave(
    policy: PremainPolicy, settings: PremainSettings, *, timeout: float = 30.0
) -> ActivationResult:
    """Activate at the coordinator with Gramine's ``/dev/attestation`` (policy's directory).

    Raises:
        ConfigError: incomplete settings, an unreadable root or collateral file.
        VerificationError: the root is not the measured one, or the coordinator refuses the
            evidence (``reason`` from it) or answers something that does not check out.
        RequestRefusedError: the coordinator refuses otherwise (unknown service, ...).
        NetworkError: the coordinator or the PCCS cannot be reached.
        EnvironmentUnavailableError: no Gramine attestation device (not inside an enclave).
    """
    from sealpod.coordinator.client import activate
    from sealpod.tee.backend import GramineBackend

    if settings.coordinator is None or settings.service is None:
        raise ConfigError("activation needs SEALPOD_COORDINATOR and SEALPOD_SERVICE")
    root_pem = _root_pem(settings, policy)
    backend = GramineBackend(policy.attestation_dir)
    collateral = _collateral(settings, backend)
    if settings.instance is not None:
        instance = settings.instance
    else:
        from sealpod.runtime.run import default_instance

        instance = default_instance(settings.service)
    _logger.info(
        "activating service %r instance %r at %s", settings.service, instance, settings.coordinator
    )
    return activate(
        settings.coordinator,
        root_pem,
        settings.service,
        instance,
        backend,
        collateral=collateral,
        timeout=timeout,
    )


def _check_env(env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not name or "=" in name or "\x00" in name or "\x00" in value:
            raise VerificationError(
                "malformed_response", "the coordinator sent an invalid environment variable"
            )


def _check_plan(policy: PremainPolicy, result: ActivationResult) -> None:
    """Every check before anything is written: volumes match, files land in the enclave."""
    for name, mount in sorted(policy.encrypted.items()):
        grant = result.volumes.get(name)
        if grant is None:
            raise VerificationError(
                "volume_not_granted", f"the coordinator granted no key for volume {name!r}"
            )
        if grant.mount != mount:
            raise VerificationError(
                "volume_mount_mismatch",
                f"volume {name!r} is granted at {grant.mount}, the package mounts it at {mount}",
            )
        if len(grant.key) != _GRAMINE_KEY_SIZE:
            raise VerificationError(
                "malformed_response", f"the key of volume {name!r} is not {_GRAMINE_KEY_SIZE} bytes"
            )
        if grant.rollback_protected:
            raise ConfigError(
                f"volume {name!r} is rollback_protected, but Gramine's encrypted mounts cannot "
                "report their state to the coordinator; set rollback_protected: false for it in "
                "the deployment manifest to run it under --tee gramine"
            )
    for path in sorted(result.files):
        if policy.protected_mount(path) is None:
            raise VerificationError(
                "secret_path_unprotected",
                f"{path} is not inside an in-enclave tmpfs or encrypted mount of the package; "
                "it would reach the host's disk in plaintext",
            )
    _check_env(result.env)
    if result.argv is not None and any("\x00" in arg for arg in result.argv):
        raise VerificationError("malformed_response", "the coordinator sent argv with NUL bytes")


def _write_key(attestation_dir: Path, name: str, key: bytes) -> None:
    # Gramine accepts exactly the 16 raw key bytes; the pseudo-file exists only for key names
    # the manifest uses, so no O_CREAT: a missing file means the mount is not declared.
    path = attestation_dir / "keys" / volume_key_name(name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(
            f"cannot provision the key of volume {name!r} at {path}: {exc.strerror or exc} "
            "(is the encrypted mount in the Gramine manifest?)"
        ) from exc
    try:
        written = os.write(fd, key)
    except OSError as exc:
        raise ConfigError(
            f"cannot provision the key of volume {name!r}: {exc.strerror or exc}"
        ) from exc
    finally:
        os.close(fd)
    if written != len(key):
        raise ConfigError(f"short write provisioning the key of volume {name!r}")


def _write_secret(path: str, mount: str, content: bytes) -> None:
    from sealpod._internal.fsutil import write_file_atomic

    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
        # The directories below the mount were made by us or came with the mount; a symbolic
        # link among them must not lead the secret out of it.
        real_mount = os.path.realpath(mount)
        if not is_under(os.path.realpath(parent), real_mount):
            raise VerificationError(
                "secret_path_unprotected", f"{parent} leads outside the mount {mount}"
            )
        write_file_atomic(path, content, mode=_SECRET_FILE_MODE)
    except OSError as exc:
        raise ConfigError(f"cannot write the secret file {path}: {exc.strerror or exc}") from exc


def provision(
    policy: PremainPolicy, result: ActivationResult, environ: Mapping[str, str]
) -> ExecPlan:
    """Put an activation's secrets in place and return the application's ``execve``.

    Everything is checked before anything is written: a refused plan leaves no file behind.

    Raises:
        VerificationError: ``secret_path_unprotected`` (a file outside the tmpfs/encrypted
            mounts), ``volume_not_granted``, ``volume_mount_mismatch`` or
            ``malformed_response`` (a bad key, variable or argument).
        ConfigError: a rollback-protected volume (not available under Gramine), or a key or
            file that cannot be written.
    """
    _check_plan(policy, result)
    for name in sorted(policy.encrypted):
        _write_key(policy.attestation_dir, name, result.volumes[name].key)
    for path, content in sorted(result.files.items()):
        mount = policy.protected_mount(path)
        if mount is None:  # pragma: no cover - _check_plan refused it already
            raise VerificationError("secret_path_unprotected", f"{path} is not protected")
        _write_secret(path, mount, content)
    env = _application_env(environ)
    env.update(result.env)
    args = policy.args if not result.argv else tuple(result.argv[1:])
    _logger.info(
        "provisioned %d file(s), %d variable(s), %d volume key(s)%s; starting %s",
        len(result.files),
        len(result.env),
        len(policy.encrypted),
        ", argv from the coordinator" if result.argv else "",
        policy.entrypoint,
    )
    return ExecPlan(path=policy.entrypoint, argv=(policy.entrypoint, *args), env=env)


def run_premain(
    policy: PremainPolicy,
    environ: Mapping[str, str],
    *,
    execve: Exec = os.execve,
) -> NoReturn:
    """Activate (when a coordinator is set), provision, and exec the application.

    Raises:
        ConfigError: bad settings, an unwritable secret, the entrypoint cannot be executed.
        VerificationError: the activation or its answer is refused (see :func:`provision`).
        RequestRefusedError: the coordinator refuses the activation.
        NetworkError: the coordinator or the PCCS cannot be reached.
        EnvironmentUnavailableError: no Gramine attestation device.
    """
    settings = PremainSettings.from_environ(environ)
    if settings.coordinator is None:
        plan = plan_without_activation(policy, environ)
    else:
        result = activate_in_enclave(policy, settings)
        plan = provision(policy, result, environ)
        del result
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        execve(plan.path, list(plan.argv), dict(plan.env))
    except OSError as exc:
        raise ConfigError(f"cannot execute {plan.path}: {exc.strerror or exc}") from exc
    raise ConfigError(f"execve of {plan.path} returned")  # only an injected execve returns
