"""``sealpod build``: an existing image in, a signed confidential package out.

Steps: open the image, extract it safely into a private temporary directory, hash every
trusted file on all cores, write the enclave manifest, measure it (MRENCLAVE), sign a
SIGSTRUCT over the measurement, and write an OCI image layout holding the original layer
blobs unchanged plus one deterministic layer with ``/.sealpod/enclave.json``,
``/.sealpod/enclave.sig`` and ``/.sealpod/gramine/entrypoint.manifest``. The output appears
all at once (built beside it, then renamed) or not at all.

What is trusted: every regular file and symbolic link of the rootfs except ``/proc``,
``/sys``, ``/dev``, ``/.sealpod``, the shadow files and the ``exclude`` globs. Paths at or
below a tmpfs, volume or allowed path are not trusted either: the first two are hidden by
their mount at run time, and allowed paths pass through unchecked by the user's choice.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import posixpath
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from sealpod.errors import ConfigError, ManifestError
from sealpod.image import (
    ImageConfig,
    Layer,
    LayerFile,
    extract_layers,
    host_architecture,
    layer_from_directory,
    layer_from_files,
    open_image,
    write_oci_layout,
)
from sealpod.package._hashing import HashProgress, hash_files
from sealpod.package._rootfs import find_executable, resolve_in_tree, resolve_user, walk_tree
from sealpod.package.gramine import render_gramine_manifest
from sealpod.package.manifest import EnclaveManifest, TrustedFile, check_path, parse_env
from sealpod.package.measure import measure_manifest
from sealpod.package.package import (
    ANNOTATION_MRENCLAVE,
    ANNOTATION_MRSIGNER,
    ENCLAVE_JSON,
    ENCLAVE_SIG,
    GRAMINE_MANIFEST,
    PackageInfo,
    open_package,
    package_info,
)
from sealpod.sgx import EnclaveSigningKey, new_sigstruct, sign_sigstruct

_logger = logging.getLogger(__name__)

_VOLUME_SPEC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63}):(/.*)$")


def parse_volume(spec: str) -> tuple[str, str]:
    """``NAME:PATH`` -> (name, normalised absolute path).

    Raises:
        ConfigError: not ``NAME:/absolute/path``.
    """
    match = _VOLUME_SPEC.fullmatch(spec)
    if match is None:
        raise ConfigError(f"volume {spec!r}: expected NAME:/absolute/path")
    return match.group(1), _clean_path(match.group(2), "volume")


def _clean_path(path: str, what: str) -> str:
    if not path.startswith("/"):
        raise ConfigError(f"{what} {path!r}: must be an absolute path")
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    try:
        return check_path(cleaned, what)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _signing_date(date: _dt.date | None) -> _dt.date:
    if date is not None:
        return date
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            return _dt.datetime.fromtimestamp(int(epoch), tz=_dt.UTC).date()
        except (ValueError, OverflowError, OSError) as exc:
            raise ConfigError(f"SOURCE_DATE_EPOCH={epoch!r} is not epoch seconds") from exc
    return _dt.datetime.now(tz=_dt.UTC).date()


def _force_rmtree(path: Path) -> None:
    # Extracted trees hold read-only directories; make them writable to remove them.
    def retry(function: object, failed: str, _exc: object) -> None:
        parent = os.path.dirname(failed)
        os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IRWXU)
        if os.path.isdir(failed) and not os.path.islink(failed):
            shutil.rmtree(failed, onerror=retry)
        else:
            os.unlink(failed)

    if path.exists():
        shutil.rmtree(path, onerror=retry)


def collect_trusted_files(
    root: Path,
    *,
    exclude: Sequence[str] = (),
    hidden: Sequence[str] = (),
    progress: HashProgress | None = None,
) -> dict[str, TrustedFile]:
    """Hash the trusted files of an extracted tree (see the module docstring for which).

    Hard links to one inode are hashed once.

    Raises:
        ConfigError: the tree cannot be read.
    """
    entries = walk_tree(root, exclude=exclude, hidden=hidden)
    unique: dict[tuple[int, int], int] = {}
    paths: list[str | Path] = []
    sizes: list[int] = []
    for entry in entries:
        if entry.kind == "file" and entry.inode not in unique:
            unique[entry.inode] = len(paths)
            paths.append(entry.host_path)
            sizes.append(entry.size)
    digests = hash_files(paths, sizes, progress=progress)
    trusted: dict[str, TrustedFile] = {}
    for entry in entries:
        if entry.kind == "file":
            digest, size = digests[unique[entry.inode]]
            trusted[entry.path] = TrustedFile(
                sha256=digest, size=size, mode=entry.mode, type="file"
            )
        else:
            trusted[entry.path] = TrustedFile(
                sha256=hashlib.sha256(entry.target).hexdigest(),
                size=entry.size,
                mode=entry.mode,
                type="symlink",
            )
    return trusted


def _argv_from(config: ImageConfig, argv: Sequence[str] | None) -> tuple[str, ...]:
    chosen = tuple(argv) if argv else config.argv
    if not chosen:
        raise ManifestError(
            "the image has no Entrypoint or Cmd; give the command with --argv", path="argv"
        )
    return chosen


def build_manifest(
    root: Path,
    config: ImageConfig,
    *,
    isv_prod_id: int = 0,
    isv_svn: int = 0,
    debug: bool = False,
    volumes: Mapping[str, str] | None = None,
    tmpfs: Sequence[str] = (),
    allow: Sequence[str] = (),
    exclude: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    argv: Sequence[str] | None = None,
    progress: HashProgress | None = None,
) -> EnclaveManifest:
    """The enclave manifest of the extracted tree ``root`` run as ``config`` says.

    ``env`` entries override the image's Env; a non-empty ``argv`` replaces Entrypoint + Cmd.

    Raises:
        ManifestError: no command, an entrypoint that is not an executable trusted file, an
            unknown user, or an invalid value (the path names it).
        ConfigError: a bad path, or the tree cannot be read.
    """
    volume_map = {
        name: _clean_path(path, f"volume {name}") for name, path in (volumes or {}).items()
    }
    tmpfs_paths = tuple(dict.fromkeys(_clean_path(p, "tmpfs") for p in tmpfs))
    allowed = tuple(dict.fromkeys(_clean_path(p, "allow") for p in allow))
    merged_env = parse_env(config.env)
    merged_env.update(env or {})
    full_argv = _argv_from(config, argv)
    working_dir = _clean_path(config.working_dir or "/", "working dir")
    entrypoint = find_executable(root, full_argv[0], merged_env.get("PATH"), working_dir)
    user = resolve_user(root, config.user)
    trusted = collect_trusted_files(
        root,
        exclude=exclude,
        hidden=(*tmpfs_paths, *volume_map.values(), *allowed),
        progress=progress,
    )
    target = resolve_in_tree(root, entrypoint)
    if entrypoint not in trusted or target is None or target not in trusted:
        raise ManifestError(
            f"entrypoint {entrypoint} is excluded from the trusted files", path="argv[0]"
        )
    return EnclaveManifest.from_document(
        {
            "entrypoint": entrypoint,
            "argv": list(full_argv),
            "env": merged_env,
            "working_dir": working_dir,
            "user": user.model_dump(),
            "trusted_files": {p: t.model_dump() for p, t in trusted.items()},
            "allowed_files": list(allowed),
            "tmpfs": list(tmpfs_paths),
            "volumes": volume_map,
            "isv_prod_id": isv_prod_id,
            "isv_svn": isv_svn,
            "debug": debug,
        }
    )


def build_package(
    source: str,
    output: Path,
    key: EnclaveSigningKey,
    *,
    isv_prod_id: int = 0,
    isv_svn: int = 0,
    debug: bool = False,
    volumes: Mapping[str, str] | None = None,
    tmpfs: Sequence[str] = (),
    allow: Sequence[str] = (),
    exclude: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    argv: Sequence[str] | None = None,
    progress: HashProgress | None = None,
    date: _dt.date | None = None,
) -> PackageInfo:
    """Build a signed confidential package from the image ``source``.

    Args:
        source: ``oci:DIR[:TAG]``, ``docker-archive:FILE[:TAG]`` or ``dir:ROOTFS``.
        output: the OCI image layout directory to create (must not exist).
        key: the enclave signing key (MRSIGNER).
        isv_prod_id: ISVPRODID (0..65535).
        isv_svn: ISVSVN (0..65535).
        debug: a debug enclave (logged as a warning: the host can read its memory).
        volumes: encrypted volume name -> mount path.
        tmpfs: in-memory directories.
        allow: paths passed through read-write, unchecked.
        exclude: globs of paths left out of the trusted files.
        env: variables overriding the image's Env.
        argv: the command, replacing the image's Entrypoint + Cmd.
        progress: called with (bytes hashed, bytes total) while hashing.
        date: the SIGSTRUCT date (default ``SOURCE_DATE_EPOCH``, else today, UTC).

    Returns:
        What the package is (MRENCLAVE, MRSIGNER, ...).

    Raises:
        ConfigError: a bad source or option, ``output`` exists, or files cannot be written.
        ManifestError: the image cannot be described as an enclave (no command, ...).
        VerificationError: a layer of the source fails its digest check or holds an unsafe
            entry (path traversal, links escaping the root).
    """
    if output.exists() or output.is_symlink():
        raise ConfigError(f"{output} already exists")
    parent = output.absolute().parent
    if not parent.is_dir():
        raise ConfigError(f"{parent} is not a directory")
    image = open_image(source)
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{output.name}.build-", dir=parent))
    except OSError as exc:
        raise ConfigError(f"cannot write in {parent}: {exc.strerror or exc}") from exc
    try:
        rootfs = work / "rootfs"
        rootfs.mkdir()
        extract_layers(image, rootfs, preserve_owners=False)
        manifest = build_manifest(
            rootfs,
            image.config,
            isv_prod_id=isv_prod_id,
            isv_svn=isv_svn,
            debug=debug,
            volumes=volumes,
            tmpfs=tmpfs,
            allow=allow,
            exclude=exclude,
            env=env,
            argv=argv,
            progress=progress,
        )
        symlink_targets = {
            path: target
            for path, entry in manifest.trusted_files.items()
            if entry.type == "symlink" and (target := resolve_in_tree(rootfs, path)) is not None
        }
        gramine = render_gramine_manifest(manifest, symlink_targets=symlink_targets)
        mr_enclave = measure_manifest(manifest)
        sigstruct = sign_sigstruct(
            new_sigstruct(
                mr_enclave=mr_enclave,
                date=_signing_date(date),
                isv_prod_id=isv_prod_id,
                isv_svn=isv_svn,
                debug=debug,
            ),
            key,
        )
        layers_dir = work / "layers"
        base_layers: list[Layer] = list(image.layers)
        config = image.config
        if image.rootfs is not None:
            base_layers = [layer_from_directory(image.rootfs, layers_dir, mtime=None, owner=None)]
            config = ImageConfig(
                entrypoint=manifest.argv,
                env=tuple(f"{k}={v}" for k, v in manifest.env.items()),
                working_dir=manifest.working_dir,
                architecture=host_architecture(),
            )
        sealpod_layer = layer_from_files(
            {
                ENCLAVE_JSON: LayerFile(manifest.canonical_bytes(), 0o444),
                ENCLAVE_SIG: LayerFile(sigstruct.to_bytes(), 0o444),
                GRAMINE_MANIFEST: LayerFile(gramine.encode(), 0o444),
            },
            layers_dir,
            # Uncompressed: `sealpod run` reads this layer on every start, and inflating it
            # cost more than the rest of verification (it is a few MB of JSON and TOML).
            compression="none",
        )
        labels = {**config.labels, ANNOTATION_MRENCLAVE: mr_enclave.hex()}
        annotations = {
            ANNOTATION_MRENCLAVE: mr_enclave.hex(),
            ANNOTATION_MRSIGNER: key.mr_signer.hex(),
        }
        layout = work / "package"
        write_oci_layout(
            layout, replace(config, labels=labels), [*base_layers, sealpod_layer], annotations
        )
        try:
            os.rename(layout, output)
        except OSError as exc:
            raise ConfigError(f"cannot create {output}: {exc.strerror or exc}") from exc
    finally:
        _force_rmtree(work)
    info = package_info(open_package(output))
    _logger.info(
        "built %s: MRENCLAVE %s, %d trusted files",
        output,
        info.mrenclave,
        info.trusted_files,
    )
    return info
