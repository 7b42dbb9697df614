"""Writing images: deterministic layers, OCI image layouts and docker-archive tarballs.

Determinism: the same input gives byte-identical blobs. Layer tars list entries sorted by
path (parents first) in the POSIX.1-2001 (pax) format with the given fixed mtime and owners and
empty user/group names; gzip streams carry mtime 0 and no file name; JSON documents use sorted
keys and no whitespace. Compression uses the host's zlib; another zlib may compress
differently, which changes digests but never diff_ids.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sealpod.errors import ConfigError, VerificationError
from sealpod.image._blobs import HashingReader, decompressor, parse_digest
from sealpod.image._records import LayerFile
from sealpod.image._walk import directory_entries
from sealpod.image.model import (
    ANNOTATION_REF_NAME,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    Compression,
    ImageConfig,
    Layer,
    media_type_for,
)

_logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_GZIP_LEVEL = 6


def canonical_json(document: Any) -> bytes:
    """JSON with sorted keys and no whitespace (what sealpod writes for every image document)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class _HashingWriter(io.RawIOBase):
    def __init__(self, inner: Any) -> None:
        super().__init__()
        self._inner = inner
        self.hash = hashlib.sha256()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.hash.update(view)
        self.count += len(view)
        if self._inner is not None:
            self._inner.write(view)
        return len(view)

    def digest(self) -> str:
        return f"sha256:{self.hash.hexdigest()}"


@dataclass(frozen=True)
class _Entry:
    info: tarfile.TarInfo
    content: Path | bytes | None


def _normalise(info: tarfile.TarInfo, mtime: int | None, owner: tuple[int, int] | None) -> None:
    if mtime is not None:
        info.mtime = mtime
    if owner is not None:
        info.uid, info.gid = owner
    info.uname = info.gname = ""


def _write_layer(entries: Iterable[_Entry], work_dir: Path, compression: Compression) -> Layer:
    """Write entries as a layer blob in ``work_dir``; name it by its digest."""
    work_dir.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=work_dir, prefix=".layer-")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            outer = _HashingWriter(raw)
            compressor: Any
            if compression == "gzip":
                compressor = gzip.GzipFile(
                    filename="", mode="wb", fileobj=outer, mtime=0, compresslevel=_GZIP_LEVEL
                )
            elif compression == "zstd":
                try:
                    zstandard = importlib.import_module("zstandard")
                except ImportError as exc:
                    raise ConfigError("zstd layers need the optional 'zstandard' package") from exc
                compressor = zstandard.ZstdCompressor().stream_writer(outer, closefd=False)
            else:
                compressor = None
            inner = _HashingWriter(compressor if compressor is not None else outer)
            with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for entry in entries:
                    if isinstance(entry.content, bytes):
                        tar.addfile(entry.info, io.BytesIO(entry.content))
                    elif entry.content is not None:
                        with open(entry.content, "rb") as stream:
                            tar.addfile(entry.info, stream)
                    else:
                        tar.addfile(entry.info)
            if compressor is not None:
                compressor.close()
        digest = outer.digest()
        final = work_dir / parse_digest(digest, "layer")[1]
        os.replace(temp, final)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write a layer into {work_dir}: {exc}") from exc
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return Layer(
        media_type=media_type_for(compression),
        digest=digest,
        size=outer.count,
        diff_id=inner.digest(),
        path=final,
    )


def layer_from_directory(
    root: Path,
    work_dir: Path,
    *,
    prefix: str = "",
    mtime: int | None = 0,
    owner: tuple[int, int] | None = (0, 0),
    compression: Compression = "gzip",
    include_devices: bool = False,
) -> Layer:
    """A layer holding the tree below ``root`` (placed under ``prefix`` in the image).

    Args:
        root: the directory to pack (links are stored, never followed).
        work_dir: where the blob is written (named by its hex digest).
        prefix: a relative path the tree goes under (e.g. ``".sealpod"``).
        mtime: the mtime of every entry, or ``None`` to keep the files' own.
        owner: ``(uid, gid)`` of every entry, or ``None`` to keep the files' own.
        compression: ``gzip`` (default), ``none`` or ``zstd`` (needs ``zstandard``).
        include_devices: also store device nodes and FIFOs (skipped by default).

    Returns:
        The layer, with digest, size and diff_id.

    Raises:
        ConfigError: ``root`` cannot be read, a bad prefix, or zstd without ``zstandard``.
    """
    prefix_parts = _prefix_parts(prefix)

    def entries() -> Iterable[_Entry]:
        yield from _prefix_dirs(prefix_parts, mtime if mtime is not None else 0)
        for info, content in directory_entries(root):
            if (info.ischr() or info.isblk() or info.isfifo()) and not include_devices:
                _logger.info("not packing device node or fifo %s", info.name)
                continue
            info.name = "/".join((*prefix_parts, info.name))
            if info.islnk():
                info.linkname = "/".join((*prefix_parts, info.linkname))
            _normalise(info, mtime, owner)
            yield _Entry(info, content)

    return _write_layer(entries(), work_dir, compression)


def _prefix_parts(prefix: str) -> tuple[str, ...]:
    pure = PurePosixPath(prefix)
    if pure.is_absolute() or ".." in pure.parts:
        raise ConfigError(f"layer prefix {prefix!r} must be a relative path without '..'")
    return tuple(p for p in pure.parts if p != ".")


def _prefix_dirs(parts: tuple[str, ...], mtime: int) -> Iterable[_Entry]:
    for i in range(1, len(parts) + 1):
        info = tarfile.TarInfo("/".join(parts[:i]))
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        _normalise(info, mtime, (0, 0))
        yield _Entry(info, None)


def layer_from_files(
    files: Mapping[str, bytes | LayerFile],
    work_dir: Path,
    *,
    mtime: int = 0,
    owner: tuple[int, int] = (0, 0),
    compression: Compression = "gzip",
) -> Layer:
    """A layer holding in-memory files (parent directories are added with mode 0755).

    Args:
        files: image path (``".sealpod/enclave.json"`` or ``"/.sealpod/enclave.json"``) to
            content (bytes get mode 0644).
        work_dir: where the blob is written.
        mtime: the mtime of every entry.
        owner: ``(uid, gid)`` of every entry.
        compression: ``gzip`` (default), ``none`` or ``zstd``.

    Returns:
        The layer, with digest, size and diff_id.

    Raises:
        ConfigError: a path with ``..``, an empty path, or two files on one path.
    """
    normalised: dict[tuple[str, ...], LayerFile] = {}
    for name, value in files.items():
        parts = _prefix_parts(name.lstrip("/"))
        if not parts:
            raise ConfigError(f"layer file {name!r} has no name")
        if parts in normalised:
            raise ConfigError(f"layer file {name!r} given twice")
        normalised[parts] = value if isinstance(value, LayerFile) else LayerFile(value)
    directories = {parts[:i] for parts in normalised for i in range(1, len(parts))}
    clash = directories & normalised.keys()
    if clash:
        raise ConfigError(f"{'/'.join(min(clash))} is both a file and a directory")

    def entries() -> Iterable[_Entry]:
        for parts in sorted(directories | normalised.keys()):
            info = tarfile.TarInfo("/".join(parts))
            item = normalised.get(parts)
            if item is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            else:
                info.type, info.mode, info.size = tarfile.REGTYPE, item.mode, len(item.data)
            _normalise(info, mtime, owner)
            yield _Entry(info, item.data if item is not None else None)

    return _write_layer(entries(), work_dir, compression)


def config_document(config: ImageConfig, diff_ids: Sequence[str]) -> bytes:
    """The image configuration JSON for ``config`` over layers with these diff_ids.

    Fields sealpod does not model are kept from ``config.raw_json``; the run configuration
    fields come from the dataclass; ``rootfs`` lists ``diff_ids``; history is kept when it still
    matches the layers, extended with one entry per added layer, and dropped otherwise.

    Raises:
        ConfigError: ``config.raw_json`` is not a JSON object.
    """
    document: dict[str, Any] = {}
    if config.raw_json:
        try:
            loaded = json.loads(config.raw_json)
        except ValueError as exc:
            raise ConfigError(f"image config is not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError("image config is not a JSON object")
        document = loaded
    section = dict(document.get("config") or {})
    for key, value in (
        ("Entrypoint", list(config.entrypoint) if config.entrypoint is not None else None),
        ("Cmd", list(config.cmd) if config.cmd is not None else None),
        ("Env", list(config.env) or None),
        ("WorkingDir", config.working_dir or None),
        ("User", config.user or None),
        ("ExposedPorts", {port: {} for port in config.exposed_ports} or None),
        ("Labels", dict(config.labels) or None),
    ):
        if value is None:
            section.pop(key, None)
        else:
            section[key] = value
    document["config"] = section
    document["architecture"] = config.architecture
    document["os"] = config.os
    document["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    history = document.get("history")
    if isinstance(history, list):
        layered = sum(1 for h in history if isinstance(h, dict) and not h.get("empty_layer"))
        if layered <= len(diff_ids):
            history = [
                *history,
                *({"created_by": "sealpod"} for _ in range(len(diff_ids) - layered)),
            ]
            document["history"] = history
        else:
            del document["history"]
    return canonical_json(document)


def _copy_blob(layer: Layer, dest: Path, *, decompress: bool) -> tuple[str, int]:
    """Copy a layer blob to ``dest`` checking its digest; return (digest of what was written, size)."""
    temp = dest.with_name(dest.name + ".part")
    with layer.open_blob() as raw, open(temp, "wb") as out:
        outer = HashingReader(
            raw, parse_digest(layer.digest, "layer")[0] if layer.digest else "sha256"
        )
        if decompress:
            source: IO[bytes] = decompressor(io.BufferedReader(outer, _CHUNK), layer.compression)
        else:
            source = io.BufferedReader(outer, _CHUNK)
        written = _HashingWriter(out)
        try:
            shutil.copyfileobj(source, written, _CHUNK)
        except (OSError, EOFError, zlib.error) as exc:
            # A tampered compressed blob usually fails to decompress before its digest is
            # known; finish hashing it to say which it is.
            temp.unlink(missing_ok=True)
            outer.drain()
            if layer.digest is not None and outer.digest() != layer.digest:
                raise VerificationError(
                    "blob_digest_mismatch", f"{layer.path}: blob does not match its digest"
                ) from exc
            if isinstance(exc, EOFError | zlib.error | gzip.BadGzipFile):
                raise VerificationError("malformed_layer", f"{layer.path}: {exc}") from exc
            raise
        outer.drain()
    try:
        if layer.digest is not None and outer.digest() != layer.digest:
            raise VerificationError(
                "blob_digest_mismatch", f"{layer.path}: blob does not match its digest"
            )
        if decompress and written.digest() != layer.diff_id:
            raise VerificationError(
                "diff_id_mismatch", f"{layer.path}: layer does not match its diff_id"
            )
        if not decompress and layer.compression == "none" and written.digest() != layer.diff_id:
            raise VerificationError(
                "diff_id_mismatch", f"{layer.path}: layer does not match its diff_id"
            )
    except VerificationError:
        temp.unlink(missing_ok=True)
        raise
    os.replace(temp, dest)
    return written.digest(), written.count


def _write_blob(blobs: Path, data: bytes) -> dict[str, Any]:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    path = blobs / parse_digest(digest, "blob")[1]
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


@dataclass(frozen=True)
class WrittenImage:
    """What a writer produced: where, and the digests that name it."""

    path: Path
    manifest_digest: str | None
    config_digest: str
    layer_digests: tuple[str, ...]
    diff_ids: tuple[str, ...]


def write_oci_layout(
    dest: Path,
    config: ImageConfig,
    layers: Sequence[Layer],
    annotations: Mapping[str, str] | None = None,
    *,
    tag: str | None = "latest",
) -> WrittenImage:
    """Write an OCI image layout at ``dest`` (a new or empty directory).

    Every layer blob is copied (its digest re-checked) into ``blobs/sha256``; the config lists
    the layers' diff_ids; ``index.json`` names the manifest ``tag``.

    Args:
        dest: the layout directory.
        config: the image configuration (``raw_json`` fields are kept).
        layers: the layers, bottom first (from :func:`open_image` or the layer builders).
        annotations: manifest annotations.
        tag: the ``org.opencontainers.image.ref.name`` in ``index.json`` (``None``: none).

    Returns:
        The digests of what was written.

    Raises:
        ConfigError: ``dest`` is not empty or cannot be written.
        VerificationError: a layer blob does not match its digest or diff_id.
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConfigError(f"{dest} exists and is not an empty directory")
    blobs = dest / "blobs" / "sha256"
    try:
        blobs.mkdir(parents=True, exist_ok=True)
        descriptors: list[dict[str, Any]] = []
        for layer in layers:
            incoming = blobs / ".incoming"
            digest, size = _copy_blob(layer, incoming, decompress=False)
            os.replace(incoming, blobs / parse_digest(digest, "layer")[1])
            media_type = layer.media_type
            descriptors.append({"mediaType": media_type, "digest": digest, "size": size})
        config_bytes = config_document(config, [layer.diff_id for layer in layers])
        config_descriptor = {"mediaType": MEDIA_OCI_CONFIG, **_write_blob(blobs, config_bytes)}
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": config_descriptor,
            "layers": descriptors,
        }
        if annotations:
            manifest["annotations"] = dict(annotations)
        manifest_descriptor = {
            "mediaType": MEDIA_OCI_MANIFEST,
            **_write_blob(blobs, canonical_json(manifest)),
        }
        if tag is not None:
            manifest_descriptor["annotations"] = {ANNOTATION_REF_NAME: tag}
        index = {
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": [manifest_descriptor],
        }
        (dest / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
        (dest / "index.json").write_bytes(canonical_json(index))
    except OSError as exc:
        raise ConfigError(f"cannot write OCI layout {dest}: {exc}") from exc
    return WrittenImage(
        path=dest,
        manifest_digest=manifest_descriptor["digest"],
        config_digest=config_descriptor["digest"],
        layer_digests=tuple(d["digest"] for d in descriptors),
        diff_ids=tuple(layer.diff_id for layer in layers),
    )


def _tar_add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    _normalise(info, 0, (0, 0))
    tar.addfile(info, io.BytesIO(data))


def _tar_add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    _normalise(info, 0, (0, 0))
    tar.addfile(info)


def write_docker_archive(
    dest: Path,
    config: ImageConfig,
    layers: Sequence[Layer],
    *,
    repo_tags: Sequence[str] = (),
) -> WrittenImage:
    """Write a docker-archive tarball (what ``docker save`` writes, Docker 25+ blob layout).

    Layers are stored uncompressed, so each layer blob's digest is its diff_id.

    Args:
        dest: the archive file to create.
        config: the image configuration.
        layers: the layers, bottom first.
        repo_tags: ``RepoTags`` (``name:tag``) for ``manifest.json``.

    Returns:
        The digests of what was written.

    Raises:
        ConfigError: ``dest`` cannot be written.
        VerificationError: a layer blob does not match its digest or diff_id.
    """
    try:
        with tempfile.TemporaryDirectory(prefix=".docker-archive-", dir=dest.parent) as temp_dir:
            temp = Path(temp_dir)
            stored: list[tuple[str, Path]] = []
            for i, layer in enumerate(layers):
                target = temp / f"layer{i}"
                digest, _ = _copy_blob(layer, target, decompress=layer.compression != "none")
                stored.append((digest, target))
            config_bytes = config_document(config, [layer.diff_id for layer in layers])
            config_name = f"blobs/sha256/{hashlib.sha256(config_bytes).hexdigest()}"
            layer_names = [f"blobs/sha256/{parse_digest(d, 'layer')[1]}" for d, _ in stored]
            manifest = [{"Config": config_name, "RepoTags": list(repo_tags), "Layers": layer_names}]
            partial = temp / "archive.tar"
            with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _tar_add_dir(tar, "blobs")
                _tar_add_dir(tar, "blobs/sha256")
                seen: set[str] = set()
                for name, (_, path) in zip(layer_names, stored, strict=True):
                    if name in seen:
                        continue
                    seen.add(name)
                    info = tarfile.TarInfo(name)
                    info.size, info.mode = path.stat().st_size, 0o644
                    _normalise(info, 0, (0, 0))
                    with open(path, "rb") as stream:
                        tar.addfile(info, stream)
                _tar_add_bytes(tar, config_name, config_bytes)
                _tar_add_bytes(tar, "manifest.json", canonical_json(manifest))
            os.replace(partial, dest)
    except OSError as exc:
        raise ConfigError(f"cannot write docker archive {dest}: {exc}") from exc
    return WrittenImage(
        path=dest,
        manifest_digest=None,
        config_digest=f"sha256:{config_name.rpartition('/')[2]}",
        layer_digests=tuple(d for d, _ in stored),
        diff_ids=tuple(layer.diff_id for layer in layers),
    )
