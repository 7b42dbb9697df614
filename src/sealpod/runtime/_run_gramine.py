"""``sealpod run --tee gramine``: the command lines that start a package under Gramine-SGX.

Untestable on this machine (no SGX); what is tested is the construction. The plan:

1. the package's Gramine manifest (``/.sealpod/gramine/entrypoint.manifest``) is written to a
   private work directory as ``entrypoint.manifest``;
2. ``gramine-sgx-sign`` signs it with the operator's enclave key into ``entrypoint.manifest.sgx``
   and ``entrypoint.sig`` (the hardware MRENCLAVE; the package's own ``enclave.sig`` signs the
   *simulation* measurement, which SGX hardware does not compute);
3. ``gramine-sgx entrypoint ARGS`` runs in a bubblewrap mount namespace whose ``/`` is the
   unpacked rootfs (the manifest's ``file:`` URIs are the paths the application sees), with the
   SGX devices, ``/proc``, the host's Gramine installation read-only, and the work directory.

Gramine itself enforces the trusted-file hashes inside the enclave; the sealpod premain
(:mod:`sealpod.runtime.premain`, started first by the package's Gramine manifest when the image
carries Python and sealpod) performs the activation from inside the enclave through
``/dev/attestation``, so no secret is handled by this untrusted launcher. The launcher only hands
the premain its settings as environment variables (``--setenv`` of bubblewrap; the manifest
passes exactly those names through): the coordinator's URL, its root certificate as PEM text
(the enclave cannot read host files that are not trusted or allowed), the service, the
instance and the PCCS URL. See ``docs/gramine.md``.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sealpod.errors import ConfigError, EnvironmentUnavailableError

#: Devices Gramine-SGX needs (in-kernel SGX driver, Linux >= 5.11).
SGX_DEVICES: Final = ("/dev/sgx_enclave", "/dev/sgx_provision")
#: Where Debian's gramine package installs its runtime (bound read-only into the namespace).
GRAMINE_DIRS: Final = ("/usr/lib/x86_64-linux-gnu/gramine", "/usr/bin/gramine-sgx")
#: The work directory's path inside the namespace.
WORK_MOUNT: Final = "/.sealpod-gramine"
MANIFEST_NAME: Final = "entrypoint"
#: The module the Gramine manifest runs as the premain (``sealpod.package.gramine``).
_PREMAIN_MODULE: Final = "sealpod.cli.premain"


@dataclass(frozen=True)
class GramineLaunch:
    """The commands of one Gramine-SGX run (see the module docstring)."""

    manifest_path: Path
    sign: tuple[str, ...]
    run: tuple[str, ...]


def check_gramine_environment(
    *,
    which: Callable[[str], str | None] = shutil.which,
    devices: Sequence[str] = SGX_DEVICES,
) -> str:
    """The path of ``gramine-sgx``; raise when it or the SGX enclave device is missing.

    Raises:
        EnvironmentUnavailableError: ``gramine-sgx`` is not installed or ``/dev/sgx_enclave``
            does not exist (no SGX hardware or driver).
    """
    program = which("gramine-sgx")
    if program is None:
        raise EnvironmentUnavailableError(
            "--tee gramine needs gramine-sgx (Debian package gramine) and SGX hardware; "
            "use --tee simulation on this machine"
        )
    if not os.path.exists(devices[0]):
        raise EnvironmentUnavailableError(
            f"--tee gramine needs SGX hardware: {devices[0]} does not exist"
        )
    return program


def gramine_launch(
    *,
    rootfs: Path,
    work_dir: Path,
    signing_key: Path,
    argv: Sequence[str],
    gramine_sgx: str = "gramine-sgx",
    gramine_sign: str = "gramine-sgx-sign",
    bwrap: str = "bwrap",
    premain_env: Mapping[str, str] | None = None,
) -> GramineLaunch:
    """The commands that sign the package's Gramine manifest and run it under Gramine-SGX.

    Args:
        rootfs: the unpacked rootfs (becomes ``/`` of the namespace Gramine runs in).
        work_dir: a private directory holding ``entrypoint.manifest`` (written by the caller).
        signing_key: the RSA-3072 enclave key for ``gramine-sgx-sign``.
        argv: the application's arguments after argv[0] (Gramine takes argv from its manifest
            unless ``loader.insecure__use_cmdline_argv`` is set, so these are informational).
        gramine_sgx: the ``gramine-sgx`` program.
        gramine_sign: the ``gramine-sgx-sign`` program.
        bwrap: the bubblewrap program.
        premain_env: the premain's settings (:func:`premain_environment`), set in the namespace
            with ``--setenv`` (public values only: URLs, names, a certificate).
    """
    manifest = work_dir / f"{MANIFEST_NAME}.manifest"
    sign = (
        gramine_sign,
        "--manifest",
        str(manifest),
        "--output",
        str(work_dir / f"{MANIFEST_NAME}.manifest.sgx"),
        "--key",
        str(signing_key),
    )
    namespace = [bwrap, "--bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev"]
    for device in SGX_DEVICES:
        namespace += ["--dev-bind-try", device, device]
    for path in GRAMINE_DIRS:
        namespace += ["--ro-bind-try", path, path]
    namespace += ["--bind", str(work_dir), WORK_MOUNT, "--chdir", WORK_MOUNT, "--die-with-parent"]
    for name, value in sorted((premain_env or {}).items()):
        namespace += ["--setenv", name, value]
    run = (*namespace, "--", gramine_sgx, MANIFEST_NAME, *argv)
    return GramineLaunch(manifest_path=manifest, sign=sign, run=run)


def manifest_starts_premain(gramine_manifest: str) -> bool:
    """Whether a package's Gramine manifest (TOML text) starts the sealpod premain.

    Raises:
        ConfigError: the text is not TOML.
    """
    try:
        document = tomllib.loads(gramine_manifest)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the package's Gramine manifest is not TOML: {exc}") from exc
    argv = document.get("loader", {}).get("argv", [])
    return isinstance(argv, list) and argv[3:5] == ["-m", _PREMAIN_MODULE]


def premain_environment(
    *,
    coordinator: str,
    coordinator_root_pem: bytes,
    service: str,
    instance: str | None = None,
    pccs_url: str | None = None,
) -> dict[str, str]:
    """The premain's settings as the environment variables it reads.

    Raises:
        ConfigError: the root is not PEM text.
    """
    try:
        root = coordinator_root_pem.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ConfigError("the coordinator root is not PEM text") from exc
    if "-----BEGIN CERTIFICATE-----" not in root:
        raise ConfigError("the coordinator root is not a PEM certificate")
    env = {
        "SEALPOD_COORDINATOR": coordinator,
        "SEALPOD_COORDINATOR_ROOT": root,
        "SEALPOD_SERVICE": service,
    }
    if instance:
        env["SEALPOD_INSTANCE"] = instance
    if pccs_url:
        env["SEALPOD_PCCS_URL"] = pccs_url
    return env
