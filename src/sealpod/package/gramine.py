"""The package's policy as a Gramine manifest (TOML), for running on SGX hardware.

Key names follow Gramine's manifest syntax documentation (``Documentation/manifest-syntax.rst``):
``loader.entrypoint.uri`` (the LibOS), ``libos.entrypoint``, ``loader.argv``, ``loader.env.*``,
``loader.uid``/``loader.gid``, ``fs.start_dir``, ``fs.mounts`` (``tmpfs`` and
``type = "encrypted"`` with ``key_name``), ``sgx.trusted_files`` as tables with ``uri`` and
``sha256``, ``sgx.allowed_files``, ``sgx.debug``, ``sgx.isvprodid``, ``sgx.isvsvn``,
``sgx.remote_attestation = "dcap"`` and ``sys.enable_extra_runtime_domain_names_conf``.

The manifest expects to run with the package's unpacked root filesystem as ``/`` (the runtime
puts ``gramine-sgx`` in a mount namespace whose root is the rootfs), so every ``file:`` URI is
the path the application sees. ``gramine-sgx-sign`` then computes the hardware MRENCLAVE; the
measured hashes are already present, so it does not re-hash the files.

Encrypted volumes use the key named after the volume (``sealpod_volume_<name>``), which the
sealpod premain provisions after attestation.

**The premain.** When the image carries a Python interpreter and sealpod (both as trusted files,
so both are measured), the manifest starts the sealpod premain first
(:mod:`sealpod.runtime.premain`): ``libos.entrypoint`` is the interpreter, ``loader.argv`` is
``python3 -I -B -m sealpod.cli.premain --tmpfs ... --encrypted NAME=PATH ... -- ENTRYPOINT
ARG...`` (the policy the premain enforces is therefore measured), ``loader.env`` passes through
from the host only the premain's settings (:data:`~sealpod.runtime.premain.PREMAIN_SETTINGS`),
which the premain removes before it execs the entrypoint. ``-I`` keeps Python from reading
``PYTHON*`` variables or importing from the working directory; ``-B`` from trying to write
bytecode next to trusted files. Without Python and sealpod in the image the entrypoint starts
directly and gets no secrets (a static premain binary would lift that requirement; there is none
yet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import tomli_w

from sealpod.errors import ManifestError
from sealpod.package._rules import is_normal_path, is_under
from sealpod.package.manifest import EnclaveManifest
from sealpod.runtime.premain import PREMAIN_SETTINGS
from sealpod.runtime.premain import volume_key_name as _premain_volume_key_name

#: Where Debian's gramine package installs the LibOS (``gramine.libos`` in templates).
GRAMINE_LIBOS: Final = "/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so"
#: Gramine's default enclave size is too small for most interpreters.
GRAMINE_ENCLAVE_SIZE: Final = "1G"
GRAMINE_MAX_THREADS: Final = 32
#: The interpreter that runs the premain, unless told otherwise.
PREMAIN_INTERPRETER: Final = "/usr/bin/python3"
#: The module ``python3 -m`` runs as the premain, and the file that shows sealpod is installed.
PREMAIN_MODULE: Final = "sealpod.cli.premain"
_PREMAIN_MARKER: Final = "/sealpod/runtime/premain.py"


def volume_key_name(name: str) -> str:
    """The Gramine ``key_name`` of an encrypted volume."""
    return _premain_volume_key_name(name)


@dataclass(frozen=True, kw_only=True)
class GraminePremain:
    """How the Gramine manifest starts the sealpod premain before the entrypoint.

    Attributes:
        interpreter: the image's Python interpreter with sealpod installed (a trusted path).
        secret_dirs: extra in-enclave tmpfs mounts for received files (besides the package's
            own tmpfs and encrypted mounts, where files may go too).
        coordinator_root_sha256: SHA-256 (hex) of the coordinator root certificate's DER; the
            premain then refuses any other root the host names.
    """

    interpreter: str = PREMAIN_INTERPRETER
    secret_dirs: tuple[str, ...] = ()
    coordinator_root_sha256: str | None = None


def _resolve_trusted(
    manifest: EnclaveManifest, path: str, symlink_targets: Mapping[str, str]
) -> str | None:
    """``path`` itself when it is a trusted regular file, its resolved target when it is a
    trusted link to one, else None."""
    entry = manifest.trusted_files.get(path)
    if entry is None:
        return None
    if entry.type == "file":
        return path
    target = symlink_targets.get(path)
    resolved = None if target is None else manifest.trusted_files.get(target)
    return target if resolved is not None and resolved.type == "file" else None


def has_premain(
    manifest: EnclaveManifest,
    *,
    interpreter: str = PREMAIN_INTERPRETER,
    symlink_targets: Mapping[str, str] | None = None,
) -> bool:
    """Whether the image carries what the premain needs: ``interpreter`` and sealpod's premain
    module as trusted files."""
    if _resolve_trusted(manifest, interpreter, symlink_targets or {}) is None:
        return False
    return any(path.endswith(_PREMAIN_MARKER) for path in manifest.trusted_files)


def _premain_argv(
    manifest: EnclaveManifest, premain: GraminePremain, tmpfs: Sequence[str]
) -> list[str]:
    argv = [premain.interpreter, "-I", "-B", "-m", PREMAIN_MODULE]
    for path in tmpfs:
        argv += ["--tmpfs", path]
    for name, path in sorted(manifest.volumes.items()):
        argv += ["--encrypted", f"{name}={path}"]
    if premain.coordinator_root_sha256 is not None:
        argv += ["--coordinator-root-sha256", premain.coordinator_root_sha256]
    # The premain execs ENTRYPOINT with ENTRYPOINT as argv[0], as `sealpod run` does.
    return [*argv, "--", manifest.entrypoint, *manifest.argv[1:]]


def _check_premain(
    manifest: EnclaveManifest, premain: GraminePremain, symlink_targets: Mapping[str, str]
) -> str:
    """The resolved interpreter path; raises when the premain cannot run in this image."""
    interpreter = _resolve_trusted(manifest, premain.interpreter, symlink_targets)
    if interpreter is None:
        raise ManifestError(
            f"{premain.interpreter} is not a trusted file of the image: the premain needs a "
            "Python interpreter with sealpod installed inside the image",
            path="premain.interpreter",
        )
    if not any(path.endswith(_PREMAIN_MARKER) for path in manifest.trusted_files):
        raise ManifestError(
            "sealpod is not installed in the image (no trusted .../sealpod/runtime/premain.py): "
            "the premain needs a Python interpreter with sealpod installed inside the image",
            path="premain",
        )
    for path in premain.secret_dirs:
        if not is_normal_path(path) or path == "/":
            raise ManifestError(f"{path!r} is not an absolute path below /", path="secret_dirs")
        if path in manifest.volumes.values():
            raise ManifestError(f"{path} is an encrypted volume", path="secret_dirs")
        covered = next((t for t in manifest.trusted_files if is_under(t, path)), None)
        if covered is not None:
            raise ManifestError(f"{path} covers the trusted file {covered}", path="secret_dirs")
    pin = premain.coordinator_root_sha256
    if pin is not None and (len(pin) != 64 or pin.strip("0123456789abcdef")):
        raise ManifestError("must be 64 lowercase hex digits", path="coordinator_root_sha256")
    return interpreter


def render_gramine_manifest(
    manifest: EnclaveManifest,
    *,
    libos: str = GRAMINE_LIBOS,
    symlink_targets: Mapping[str, str] | None = None,
    premain: GraminePremain | Literal["auto"] | None = "auto",
) -> str:
    """The Gramine manifest (TOML text) enforcing the same policy as ``manifest``.

    Gramine checks a trusted file by the path it is opened under and hashes its content, so a
    trusted symbolic link is listed under its own path with the hash of the regular file it
    resolves to: ``symlink_targets`` maps link paths to their fully resolved targets (links
    whose target is not a trusted regular file are left out).

    ``premain``: start the sealpod premain before the entrypoint (see the module docstring);
    ``"auto"`` does so with the defaults when :func:`has_premain` finds Python and sealpod in
    the image, ``None`` never does.

    Raises:
        ManifestError: a premain was asked for but the image lacks the interpreter or sealpod,
            or its ``secret_dirs`` or root hash are invalid.
    """
    links = dict(symlink_targets or {})
    if premain == "auto":
        premain = GraminePremain() if has_premain(manifest, symlink_targets=links) else None
    files = {
        path: entry.sha256 for path, entry in manifest.trusted_files.items() if entry.type == "file"
    }
    for link, target in links.items():
        entry = manifest.trusted_files.get(link)
        if entry is not None and entry.type == "symlink" and target in files:
            files[link] = files[target]
    tmpfs = list(manifest.tmpfs)
    if premain is not None:
        tmpfs += [path for path in premain.secret_dirs if path not in tmpfs]
    mounts: list[dict[str, Any]] = [{"type": "tmpfs", "path": path} for path in tmpfs]
    mounts += [
        {"type": "encrypted", "path": path, "uri": f"file:{path}", "key_name": volume_key_name(n)}
        for n, path in sorted(manifest.volumes.items())
    ]
    document: dict[str, Any] = {
        "libos": {"entrypoint": manifest.entrypoint},
        "loader": {
            "entrypoint": {"uri": f"file:{libos}"},
            "log_level": "error",
            "argv": list(manifest.argv),
            "env": dict(sorted(manifest.env.items())),
            "uid": manifest.user.uid,
            "gid": manifest.user.gid,
        },
        "fs": {
            "root": {"type": "chroot", "uri": "file:/"},
            "start_dir": manifest.working_dir,
            "mounts": mounts,
        },
        "sys": {"enable_extra_runtime_domain_names_conf": True},
        "sgx": {
            "debug": manifest.debug,
            "isvprodid": manifest.isv_prod_id,
            "isvsvn": manifest.isv_svn,
            "remote_attestation": "dcap",
            "enclave_size": GRAMINE_ENCLAVE_SIZE,
            "max_threads": GRAMINE_MAX_THREADS,
            "trusted_files": [
                {"uri": f"file:{path}", "sha256": digest} for path, digest in sorted(files.items())
            ],
            "allowed_files": [f"file:{path}" for path in manifest.allowed_files],
        },
    }
    header = (
        "# Generated by sealpod from /.sealpod/enclave.json; sign with gramine-sgx-sign.\n"
        "# Trusted symbolic links are listed with the hash of the file they resolve to.\n"
    )
    if premain is not None:
        interpreter = _check_premain(manifest, premain, links)
        document["libos"]["entrypoint"] = interpreter
        document["loader"]["argv"] = _premain_argv(manifest, premain, tmpfs)
        document["loader"]["env"].update({name: {"passthrough": True} for name in PREMAIN_SETTINGS})
        header += (
            f"# The sealpod premain ({PREMAIN_MODULE}) starts first: it attests through\n"
            "# /dev/attestation, receives the secrets and execs the entrypoint.\n"
        )
    return header + "\n" + tomli_w.dumps(document)
