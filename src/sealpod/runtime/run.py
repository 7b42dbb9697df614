"""``sealpod run``: a confidential package's unmodified entrypoint, in the shield, attested.

The steps (issue 4 §2), in this order; nothing from the package is used before step 1 passes:

1. **Verify** the package: the SIGSTRUCT is valid and enclave.json measures to the signed
   MRENCLAVE (:func:`sealpod.package.verify_package`). Anything else is refused.
2. **Unpack** the rootfs layers into the cache keyed by their diff_ids
   (:func:`sealpod.image.extract_cached`; digests are checked while extracting, unsafe entries
   refused).
3. **Activate** (with a coordinator): the TEE backend claims the package's identity (MRENCLAVE,
   MRSIGNER, ISVPRODID, ISVSVN, DEBUG from the verified SIGSTRUCT); the coordinator client
   makes the key pair and CSR in this process (the private key never leaves it), quotes the
   binding and talks to the coordinator only over TLS pinned to ``coordinator_root``. Received
   files become in-memory files of the shield (never written to host disk), received env
   overrides the manifest's, a received argv replaces the package's. Without a coordinator only
   the manifest's static env is used, and the run says so.
4. **Shield**: a :class:`~sealpod.runtime.ShieldPolicy` from the enclave manifest (trusted files
   with their hashes, allowed files, tmpfs, the secrets as memory files, volumes through the
   :class:`~sealpod.runtime.VolumeProvider` hook), mounted as the sandbox's ``/``.
5. **Sandbox**: bubblewrap with the shield as root, the image's user and working directory,
   only the computed environment (passed over a memfd, never on a command line), host
   networking. Exit code and signals pass through; the shield is unmounted on every exit path.
6. exec the measured entrypoint, unmodified.

The executed program is always the manifest's (measured) ``entrypoint``; bubblewrap 0.8 has no
``--argv0``, so argv[0] is that path too. Host-supplied ``extra_args`` are appended to argv and
are *not* measured: the run says so.

``publish``: the sandbox shares the host's network, so a service listening on PORT is reachable
on the host's PORT directly. ``HOST_PORT:PORT`` is accepted only with equal ports and is checked
to be free before the start; no port mapping is performed.

Allowed paths write through to a per-run copy of the unpacked tree (hard links, real copies
below the allowed paths), never to the shared cache; the copy is removed after the run.
Encrypted volumes (keys from activation) keep their ciphertext in ``volume_dir``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

from sealpod.errors import ConfigError, EnvironmentUnavailableError
from sealpod.image._cachedir import sealpod_cache_dir
from sealpod.image.cache import extract_cached
from sealpod.package.package import (
    Package,
    PackageInfo,
    open_package,
    package_rootfs_layers,
    verify_package,
)
from sealpod.runtime.policy import ShieldPolicy
from sealpod.runtime.sandbox import Sandbox, SandboxUser

# Start-up time (bench_startup): what only some runs need (--publish, --coordinator,
# --tee gramine) is imported where it is used.
if TYPE_CHECKING:
    from sealpod.coordinator.client import ActivationResult
    from sealpod.package.view import EnclaveView
    from sealpod.runtime.encrypted_volume import EncryptedVolumeProvider
    from sealpod.runtime.volumes import VolumeProvider

__all__ = [
    "PortMapping",
    "PreparedRun",
    "RunSettings",
    "default_instance",
    "parse_publish",
    "prepare_run",
    "run_package",
]

_logger = logging.getLogger(__name__)

TEEName = Literal["simulation", "gramine"]


class Closeable(Protocol):
    """A volume provider the run must close (commit) after the application exits."""

    def close(self) -> None:
        """Commit and release."""
        ...


Notify = Callable[[str], None]

_PUBLISH = re.compile(r"^(?:(\d{1,5}):)?(\d{1,5})(?:/tcp)?$")


@dataclass(frozen=True)
class PortMapping:
    """``--publish HOST_PORT:PORT`` (host networking: the two must be equal)."""

    host_port: int
    port: int


def parse_publish(spec: str) -> PortMapping:
    """Parse ``HOST_PORT:PORT``, ``PORT`` or ``PORT/tcp``.

    Raises:
        ConfigError: not that shape, a port out of 1..65535, or two different ports (the
            sandbox uses the host's network; there is no port mapping).
    """
    match = _PUBLISH.fullmatch(spec.strip())
    if match is None:
        raise ConfigError(f"--publish {spec!r}: expected HOST_PORT:PORT")
    port = int(match.group(2))
    host_port = int(match.group(1)) if match.group(1) else port
    for value in (host_port, port):
        if not 1 <= value <= 0xFFFF:
            raise ConfigError(f"--publish {spec!r}: port {value} is out of range")
    if host_port != port:
        raise ConfigError(
            f"--publish {spec!r}: the sandbox shares the host's network, so the service "
            f"listens on the host's port {port} itself; port mapping is not supported"
        )
    return PortMapping(host_port, port)


def _check_port_free(mapping: PortMapping) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", mapping.host_port))  # noqa: S104 (a probe, closed at once)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"--publish {mapping.host_port}:{mapping.port}: port {mapping.host_port} "
                    "is already in use on the host"
                ) from exc
            raise ConfigError(f"--publish: cannot probe port {mapping.host_port}: {exc}") from exc


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """What ``sealpod run`` was asked to do (the CLI's flags, as a value)."""

    package: Path
    coordinator: str | None = None
    coordinator_root: Path | None = None
    service: str | None = None
    instance: str | None = None
    tee: TEEName = "simulation"
    sim_dir: Path | None = None
    publish: tuple[PortMapping, ...] = ()
    extra_args: tuple[str, ...] = ()
    cache_dir: Path | None = None
    gramine_key: Path | None = None
    volume_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.tee not in ("simulation", "gramine"):
            raise ConfigError(f"unknown TEE {self.tee!r} (use simulation or gramine)")
        if self.coordinator is None:
            if self.coordinator_root is not None or self.service is not None:
                raise ConfigError("--coordinator-root and --service need --coordinator")
        else:
            if not self.coordinator.startswith("https://"):
                raise ConfigError(f"--coordinator {self.coordinator!r} must be an https:// URL")
            if self.coordinator_root is None:
                raise ConfigError(
                    f"no pinned root for {self.coordinator}: run `sealpod verify --coordinator "
                    f"{self.coordinator}` first, or give --coordinator-root"
                )
            if not self.service:
                raise ConfigError("--coordinator needs --service (the manifest's service name)")


@dataclass(frozen=True, kw_only=True)
class PreparedRun:
    """A verified, unpacked, activated package ready to start. ``policy`` holds the secrets."""

    info: PackageInfo
    simulated: bool
    rootfs: Path
    policy: ShieldPolicy = field(repr=False)
    sandbox: Sandbox = field(repr=False)
    activated: bool
    #: Encrypted volumes opened for this run (committed and closed after it).
    opened_volumes: Mapping[str, Closeable] = field(default_factory=dict, repr=False)
    #: A per-run backing tree (packages with allowed paths), removed after the run.
    run_dir: Path | None = None


def _say(notify: Notify, simulated: bool, text: str) -> None:
    notify(f"sealpod run{' [SIMULATED]' if simulated else ''}: {text}")


def _default_notify(text: str) -> None:
    _logger.info("%s", text)


def _verified(path: Path) -> tuple[Package, PackageInfo]:
    package = open_package(path)
    return package, verify_package(package)


def _coordinator_target(settings: RunSettings) -> tuple[str, str, bytes]:
    """The coordinator URL, the service and the pinned root (PEM) the settings name.

    Raises:
        ConfigError: no coordinator, root or service, or the root cannot be read.
    """
    if settings.coordinator is None or settings.coordinator_root is None or not settings.service:
        raise ConfigError("activation needs --coordinator, --coordinator-root and --service")
    try:
        return settings.coordinator, settings.service, settings.coordinator_root.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read --coordinator-root {settings.coordinator_root}: {exc.strerror or exc}"
        ) from exc


def gramine_premain_settings(settings: RunSettings, gramine_manifest: str) -> dict[str, str] | None:
    """The environment that hands ``settings``' coordinator to the premain inside Gramine
    (``None`` without a coordinator: the entrypoint then runs without secrets).

    Raises:
        ConfigError: a coordinator is given but the package's Gramine manifest does not start
            the sealpod premain (nothing inside the enclave could activate), or the root
            cannot be read.
    """
    if settings.coordinator is None:
        return None
    from sealpod.runtime._run_gramine import manifest_starts_premain, premain_environment

    if not manifest_starts_premain(gramine_manifest):
        raise ConfigError(
            "--coordinator with --tee gramine needs the sealpod premain in the package: build "
            "it from an image with Python and sealpod installed (docs/gramine.md)"
        )
    url, service, root_pem = _coordinator_target(settings)
    return premain_environment(
        coordinator=url, coordinator_root_pem=root_pem, service=service, instance=settings.instance
    )


def _activation(
    settings: RunSettings, info: PackageInfo, notify: Notify, simulated: bool
) -> tuple[ActivationResult, bytes]:
    """Activate at the coordinator; returns the result and the pinned root (PEM).

    Imports the coordinator client lazily (start-up time without a coordinator)."""
    from sealpod.coordinator.client import activate
    from sealpod.tee import EnclaveIdentity, SimulatedPlatform, SimulationBackend
    from sealpod.tee.simulation import default_platform_dir

    url, service, root_pem = _coordinator_target(settings)
    identity = EnclaveIdentity(
        mr_enclave=bytes.fromhex(info.mrenclave),
        mr_signer=bytes.fromhex(info.mrsigner),
        isv_prod_id=info.isv_prod_id,
        isv_svn=info.isv_svn,
        debug=info.debug,
    )
    platform_dir = settings.sim_dir if settings.sim_dir is not None else default_platform_dir()
    if not platform_dir.is_dir():
        raise EnvironmentUnavailableError(
            f"no simulated SGX platform at {platform_dir} (create one with `sealpod sim init`)"
        )
    backend = SimulationBackend(SimulatedPlatform.load(platform_dir), identity)
    instance = settings.instance or default_instance(service)
    _say(
        notify,
        simulated,
        f"activating service {service!r} instance {instance!r} at "
        f"{url} (TLS pinned to {settings.coordinator_root})",
    )
    result = activate(url, root_pem, service, instance, backend)
    _say(
        notify,
        simulated,
        f"activated: certificate for {result.certificate.subject.rfc4514_string()}, "
        f"{len(result.files)} file(s), {len(result.env)} variable(s) and "
        f"{len(result.volumes)} volume key(s) received into memory"
        + (", argv replaced by the service's" if result.argv is not None else ""),
    )
    return result, root_pem


def default_instance(service: str) -> str:
    """``HOSTNAME-SERVICE``: stable across restarts on one host, so a restarted service does
    not take another of its ``max_instances`` slots (replicas on one host need ``--instance``)."""
    import socket

    host = re.sub(r"[^A-Za-z0-9_.~-]", "-", socket.gethostname()).strip(".-~_") or "host"
    return f"{host[:64]}-{service}"[:128]


def _check_volumes(
    declared: Mapping[str, str], providers: Mapping[str, VolumeProvider]
) -> dict[str, VolumeProvider]:
    """Volume mount path -> provider, for every volume the manifest declares.

    Raises:
        ConfigError: a declared volume has no provider, or a provider names no declared volume.
    """
    unknown = sorted(set(providers) - set(declared))
    if unknown:
        raise ConfigError(f"volume provider for undeclared volume(s): {', '.join(unknown)}")
    missing = sorted(set(declared) - set(providers))
    if missing:
        raise ConfigError(
            f"the package declares encrypted volume(s) {', '.join(missing)}: their keys come "
            "from activation, so run it with --coordinator"
        )
    return {declared[name]: provider for name, provider in providers.items()}


def prepare_run(
    settings: RunSettings,
    *,
    notify: Notify = _default_notify,
    volume_providers: Mapping[str, VolumeProvider] | None = None,
) -> PreparedRun:
    """Steps 1-4 of the module docstring: everything up to starting the sandbox.

    Raises:
        VerificationError: the package fails verification (``sigstruct_*``,
            ``package_mrenclave_mismatch``...), a layer fails its digest or holds an unsafe
            entry, or the coordinator refuses the evidence.
        RequestRefusedError: the coordinator refuses the activation otherwise.
        ConfigError: bad settings, a port in use, a secret path clashing with a trusted one.
        NetworkError: the coordinator cannot be reached or fails TLS against the pin.
        EnvironmentUnavailableError: no simulated platform.
    """
    simulated = settings.tee == "simulation"
    started = time.perf_counter()
    package, info = _verified(settings.package)
    _logger.debug("timing: package verified in %.0f ms", (time.perf_counter() - started) * 1e3)
    _say(
        notify,
        simulated,
        f"package {settings.package} verified: MRENCLAVE {info.mrenclave}, "
        f"MRSIGNER {info.mrsigner}, {info.trusted_files} trusted files",
    )
    for mapping in settings.publish:
        _check_port_free(mapping)
    rootfs = package_rootfs_layers(package)
    mark = time.perf_counter()
    tree = extract_cached(rootfs.image, settings.cache_dir)
    _logger.debug("timing: rootfs unpacked/cached in %.0f ms", (time.perf_counter() - mark) * 1e3)
    manifest = rootfs.manifest
    files: dict[str, bytes] = {}
    env = dict(manifest.env)
    argv = list(manifest.argv)
    activated = settings.coordinator is not None
    granted: dict[str, EncryptedVolumeProvider] = {}
    if activated:
        mark = time.perf_counter()
        result, root_pem = _activation(settings, info, notify, simulated)
        _logger.debug("timing: activation in %.0f ms", (time.perf_counter() - mark) * 1e3)
        files = dict(result.files)
        env.update(result.env)
        if result.argv:
            argv = list(result.argv)
        undeclared = sorted(set(manifest.volumes) - set(volume_providers or {}))
        if undeclared and settings.coordinator is not None:
            from sealpod.runtime._run_volumes import default_volume_dir, open_granted_volumes

            volume_dir = settings.volume_dir or default_volume_dir()
            granted = open_granted_volumes(
                {name: manifest.volumes[name] for name in undeclared},
                result,
                url=settings.coordinator,
                root_pem=root_pem,
                volume_dir=volume_dir,
            )
            _say(
                notify,
                simulated,
                f"encrypted volume(s) {', '.join(undeclared)} opened from {volume_dir} "
                "(ciphertext on the host, plaintext only through the shield)",
            )
        del result
    else:
        _say(
            notify,
            simulated,
            "no --coordinator: running WITHOUT attestation or secrets, with the package's "
            "static environment only",
        )
    if settings.extra_args:
        _say(
            notify,
            simulated,
            f"appending {len(settings.extra_args)} argument(s) from the command line "
            "(host input, not measured)",
        )
        argv += settings.extra_args
    argv[0] = manifest.entrypoint
    run_dir: Path | None = None
    try:
        if manifest.allowed_files:
            from sealpod.runtime._run_tree import private_tree

            runs = (settings.cache_dir or sealpod_cache_dir()) / "runs"
            tree, run_dir = private_tree(tree, manifest.allowed_files, runs)
        prepared = _prepared(
            info, simulated, tree, manifest, files, env, argv, activated, granted,
            {**dict(volume_providers or {}), **granted},
        )  # fmt: skip
        return replace(prepared, run_dir=run_dir)
    except BaseException:
        _close(granted)
        _remove(run_dir)
        raise


def _remove(run_dir: Path | None) -> None:
    if run_dir is not None:
        from sealpod.runtime._run_tree import remove_tree

        remove_tree(run_dir)


def _prepared(
    info: PackageInfo,
    simulated: bool,
    tree: Path,
    manifest: EnclaveView,
    files: dict[str, bytes],
    env: dict[str, str],
    argv: list[str],
    activated: bool,
    granted: Mapping[str, Closeable],
    volume_providers: Mapping[str, VolumeProvider],
) -> PreparedRun:
    from sealpod.runtime._elf import startup_files

    providers = _check_volumes(manifest.volumes, volume_providers)
    owner = (manifest.user.uid, manifest.user.gid)
    links = manifest.trusted_links
    policy = ShieldPolicy(
        backing_root=tree,
        trusted=manifest.trusted,
        trusted_links=links,
        # The program's executable, ELF interpreter and libraries, hashed on the spare core
        # while the sandbox starts (a hint; every open is checked as always).
        preverify=tuple(startup_files(tree, argv[0], manifest.trusted, links or frozenset())),
        allowed=frozenset(manifest.allowed_files),
        tmpfs=manifest.tmpfs,
        memory_files=files,
        volumes=providers,
        owner=owner,
    )
    sandbox = Sandbox(
        argv=argv,
        env=env,
        cwd=manifest.working_dir,
        user=SandboxUser(*owner),
        share_net=True,
    )
    return PreparedRun(
        info=info,
        simulated=simulated,
        rootfs=tree,
        policy=policy,
        sandbox=sandbox,
        activated=activated,
        opened_volumes=granted,
    )


def _close(volumes: Mapping[str, Closeable]) -> None:
    for name, provider in volumes.items():
        try:
            provider.close()
        except Exception:
            _logger.exception("volume %s: the final commit failed", name)


def _run_gramine(settings: RunSettings, notify: Notify) -> int:
    import subprocess
    import tempfile

    from sealpod.runtime._run_gramine import (
        GramineLaunch,
        check_gramine_environment,
        gramine_launch,
    )

    check_gramine_environment()
    if settings.gramine_key is None:
        raise ConfigError("--tee gramine needs --gramine-key (the enclave signing key)")
    package, info = _verified(settings.package)
    _say(notify, False, f"package verified: MRENCLAVE (simulation) {info.mrenclave}")
    premain_env = gramine_premain_settings(settings, package.gramine_manifest)
    tree = extract_cached(package_rootfs_layers(package).image, settings.cache_dir)

    with tempfile.TemporaryDirectory(prefix="sealpod-gramine-") as work:
        launch: GramineLaunch = gramine_launch(
            rootfs=tree,
            work_dir=Path(work),
            signing_key=settings.gramine_key,
            argv=settings.extra_args,
            premain_env=premain_env,
        )
        launch.manifest_path.write_text(package.gramine_manifest, encoding="utf-8")
        signed = subprocess.run(launch.sign, check=False)
        if signed.returncode != 0:
            raise EnvironmentUnavailableError("gramine-sgx-sign failed")
        _say(notify, False, "starting gramine-sgx")
        return subprocess.run(launch.run, check=False).returncode


def run_package(
    package_path: str | os.PathLike[str],
    *,
    coordinator: str | None = None,
    coordinator_root: str | os.PathLike[str] | None = None,
    service: str | None = None,
    instance: str | None = None,
    tee: TEEName = "simulation",
    sim_dir: str | os.PathLike[str] | None = None,
    publish: Sequence[str | PortMapping] = (),
    extra_args: Sequence[str] = (),
    cache_dir: str | os.PathLike[str] | None = None,
    gramine_key: str | os.PathLike[str] | None = None,
    volume_dir: str | os.PathLike[str] | None = None,
    volume_providers: Mapping[str, VolumeProvider] | None = None,
    notify: Notify = _default_notify,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
) -> int:
    """Run a confidential package's unmodified entrypoint (see the module docstring).

    Args:
        package_path: the package (an OCI layout directory from ``sealpod build``).
        coordinator: ``https://HOST:PORT`` of the coordinator to activate at (None: no
            attestation, no secrets; only the manifest's static env).
        coordinator_root: PEM file of the coordinator's pinned root certificate.
        service: the deployment manifest's service name.
        instance: this instance's id (default: :func:`default_instance`).
        tee: ``simulation`` (the simulated SGX platform claims the package's identity) or
            ``gramine`` (Gramine-SGX on hardware).
        sim_dir: the simulated platform's directory (default ``$SEALPOD_SIM_DIR`` or the
            user's data dir).
        publish: ``HOST_PORT:PORT`` checks (host networking; see the module docstring).
        extra_args: arguments appended to argv (host input, not measured).
        cache_dir: the unpack cache root (default ``$SEALPOD_CACHE_DIR`` or the user's cache).
        gramine_key: the enclave key ``gramine-sgx-sign`` signs with (``tee="gramine"``).
        volume_dir: where encrypted volumes keep their ciphertext, one directory per volume
            name (default: ``<user data dir>/sealpod/volumes``).
        volume_providers: volume name -> provider, instead of opening the granted encrypted
            volume (the shield's volume hook; tests).
        notify: receives one human-readable progress line at a time (simulation lines say
            SIMULATED).
        stdin: the application's stdin (default: inherited).
        stdout: the application's stdout (default: inherited).
        stderr: the application's stderr (default: inherited).

    Returns:
        The application's exit status (128+N when killed by signal N).

    Raises:
        VerificationError: the package or a layer fails verification, or the coordinator
            refuses the evidence: nothing runs.
        RequestRefusedError: the coordinator refuses the activation: nothing runs.
        ConfigError: bad arguments, a port in use, a missing root certificate.
        NetworkError: the coordinator cannot be reached.
        EnvironmentUnavailableError: FUSE, bubblewrap, the simulated platform or (gramine)
            SGX is unavailable.
    """
    settings = RunSettings(
        package=Path(package_path),
        coordinator=coordinator,
        coordinator_root=None if coordinator_root is None else Path(coordinator_root),
        service=service,
        instance=instance,
        tee=tee,
        sim_dir=None if sim_dir is None else Path(sim_dir),
        publish=tuple(p if isinstance(p, PortMapping) else parse_publish(p) for p in publish),
        extra_args=tuple(extra_args),
        cache_dir=None if cache_dir is None else Path(cache_dir),
        gramine_key=None if gramine_key is None else Path(gramine_key),
        volume_dir=None if volume_dir is None else Path(volume_dir),
    )
    if settings.tee == "gramine":
        return _run_gramine(settings, notify)
    prepared = prepare_run(settings, notify=notify, volume_providers=volume_providers)
    opened, run_dir = prepared.opened_volumes, prepared.run_dir
    try:
        return _start(prepared, notify, stdin, stdout, stderr)
    finally:
        _close(opened)
        _remove(run_dir)


def _start(
    prepared: PreparedRun,
    notify: Notify,
    stdin: int | IO[Any] | None,
    stdout: int | IO[Any] | None,
    stderr: int | IO[Any] | None,
) -> int:
    simulated = prepared.simulated
    mark = time.perf_counter()
    from sealpod.runtime.shield import Shield

    with Shield(prepared.policy) as shield:
        _logger.debug("timing: shield mounted in %.0f ms", (time.perf_counter() - mark) * 1e3)
        _say(
            notify,
            prepared.simulated,
            f"starting {prepared.sandbox.argv[0]} as {prepared.policy.owner[0]}:"
            f"{prepared.policy.owner[1]} in the sandbox (shield at {shield.mountpoint})",
        )
        sandbox = Sandbox(
            argv=prepared.sandbox.argv,
            root=shield.mountpoint,
            env=prepared.sandbox.env,
            cwd=prepared.sandbox.cwd,
            user=prepared.sandbox.user,
            share_net=True,
        )
        del prepared
        mark = time.perf_counter()
        status = sandbox.run(stdin=stdin, stdout=stdout, stderr=stderr)
        _logger.debug("timing: application ran %.0f ms", (time.perf_counter() - mark) * 1e3)
    _say(notify, simulated, f"the application exited with status {status}")
    return status
