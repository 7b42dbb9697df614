"""Opening images: OCI image layouts, docker-archive tarballs and plain root directories.

Everything read here is untrusted. JSON documents (index, manifests, configs) are size-limited,
their digests are checked before they are parsed, and digests are validated before they become
file names. Layer blobs are large, so their digests (and the diff_ids of their uncompressed
tars) are checked while they stream through :func:`sealpod.image.extract_layers` or
:func:`verify_layers`.
"""

from __future__ import annotations

import json
import logging
import platform
import tarfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from sealpod.errors import ConfigError, VerificationError
from sealpod.image._blobs import check_digest, parse_digest, read_exact_blob, sniff_compression
from sealpod.image.model import (
    ANNOTATION_REF_NAME,
    MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_LAYER_TAR,
    MEDIA_OCI_LAYER_ZSTD,
    MEDIA_OCI_MANIFEST,
    Image,
    ImageConfig,
    Layer,
    layer_compression,
)

_logger = logging.getLogger(__name__)

_JSON_LIMIT = 16 << 20
_INDEX_MEDIA = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
_MANIFEST_MEDIA = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
_MAX_INDEX_DEPTH = 4

_ARCH_NAMES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def host_architecture() -> str:
    """The host's architecture in OCI/Go spelling (``amd64``, ``arm64``, ...)."""
    machine = platform.machine().lower()
    return _ARCH_NAMES.get(machine, machine)


def _json(data: bytes, where: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"{where} is not a JSON object")
    return document


def _str_tuple(value: object, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where} must be a list of strings")


def _str(value: object, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise ConfigError(f"{where} must be a string")


def parse_image_config(data: bytes, where: str = "image config") -> ImageConfig:
    """Parse an OCI/Docker image configuration document.

    Raises:
        ConfigError: the document is malformed.
    """
    document = _json(data, where)
    section = document.get("config") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: config must be an object")
    ports = section.get("ExposedPorts") or {}
    labels = section.get("Labels") or {}
    if not isinstance(ports, dict):
        raise ConfigError(f"{where}: config.ExposedPorts must be an object")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ConfigError(f"{where}: config.Labels must map strings to strings")
    rootfs = document.get("rootfs") or {}
    if not isinstance(rootfs, dict):
        raise ConfigError(f"{where}: rootfs must be an object")
    diff_ids = _str_tuple(rootfs.get("diff_ids"), f"{where}: rootfs.diff_ids") or ()
    for i, diff_id in enumerate(diff_ids):
        parse_digest(diff_id, f"{where}: rootfs.diff_ids[{i}]")
    return ImageConfig(
        entrypoint=_str_tuple(section.get("Entrypoint"), f"{where}: config.Entrypoint"),
        cmd=_str_tuple(section.get("Cmd"), f"{where}: config.Cmd"),
        env=_str_tuple(section.get("Env"), f"{where}: config.Env") or (),
        working_dir=_str(section.get("WorkingDir"), f"{where}: config.WorkingDir"),
        user=_str(section.get("User"), f"{where}: config.User"),
        exposed_ports=tuple(sorted(str(p) for p in ports)),
        labels=labels,
        architecture=_str(document.get("architecture"), f"{where}: architecture") or "amd64",
        os=_str(document.get("os"), f"{where}: os") or "linux",
        diff_ids=diff_ids,
        raw_json=data,
    )


# -- OCI image layout ---------------------------------------------------------------------------


class _Descriptor:
    def __init__(self, raw: object, where: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} is not a descriptor object")
        self.media_type = _str(raw.get("mediaType"), f"{where}.mediaType")
        self.digest = _str(raw.get("digest"), f"{where}.digest")
        parse_digest(self.digest, f"{where}.digest")
        size = raw.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ConfigError(f"{where}.size must be a non-negative integer")
        self.size = size
        annotations = raw.get("annotations") or {}
        self.annotations: Mapping[str, str] = annotations if isinstance(annotations, dict) else {}
        plat = raw.get("platform") or {}
        self.platform: Mapping[str, Any] = plat if isinstance(plat, dict) else {}
        self.where = where


class _OCILayout:
    def __init__(self, root: Path) -> None:
        self.root = root
        layout = root / "oci-layout"
        if not layout.is_file():
            raise ConfigError(f"{root} is not an OCI image layout (no oci-layout file)")
        try:
            with open(layout, "rb") as stream:
                version = _json(read_exact_blob(stream, 4096, str(layout)), str(layout))
        except OSError as exc:
            raise ConfigError(f"cannot read {layout}: {exc}") from exc
        if not str(version.get("imageLayoutVersion", "")).startswith("1."):
            raise ConfigError(f"{layout}: unsupported imageLayoutVersion")

    def blob_path(self, digest: str, where: str) -> Path:
        algorithm, encoded = parse_digest(digest, where)
        return self.root / "blobs" / algorithm / encoded

    def read_json_blob(self, descriptor: _Descriptor) -> bytes:
        path = self.blob_path(descriptor.digest, descriptor.where)
        try:
            with open(path, "rb") as stream:
                data = read_exact_blob(stream, _JSON_LIMIT, descriptor.where)
        except FileNotFoundError:
            raise ConfigError(f"{descriptor.where}: blob {descriptor.digest} is missing") from None
        except OSError as exc:
            raise ConfigError(f"{descriptor.where}: cannot read {path}: {exc}") from exc
        check_digest(data, descriptor.digest, descriptor.where)
        if len(data) != descriptor.size:
            raise VerificationError(
                "blob_size_mismatch", f"{descriptor.where}: size is not {descriptor.size}"
            )
        return data


def _select_from_index(manifests: list[_Descriptor], tag: str | None, where: str) -> _Descriptor:
    if tag is not None:
        named = [
            d
            for d in manifests
            if d.annotations.get(ANNOTATION_REF_NAME) == tag
            or d.annotations.get("io.containerd.image.name", "").rpartition(":")[2] == tag
        ]
        if not named:
            raise ConfigError(f"{where}: no manifest is named {tag!r}")
        if len(named) > 1:
            raise ConfigError(f"{where}: several manifests are named {tag!r}")
        return named[0]
    if len(manifests) == 1:
        return manifests[0]
    names = sorted({d.annotations.get(ANNOTATION_REF_NAME, "?") for d in manifests})
    raise ConfigError(
        f"{where} holds {len(manifests)} manifests; name one as oci:DIR:TAG ({', '.join(names)})"
    )


def _select_platform(manifests: list[_Descriptor], architecture: str, where: str) -> _Descriptor:
    matching = [
        d
        for d in manifests
        if d.platform.get("os") == "linux" and d.platform.get("architecture") == architecture
    ]
    if not matching:
        raise ConfigError(f"{where}: no manifest for linux/{architecture}")
    return matching[0]


def _open_oci(root: Path, tag: str | None, source: str, architecture: str) -> Image:
    layout = _OCILayout(root)
    index_path = root / "index.json"
    try:
        with open(index_path, "rb") as stream:
            index = _json(read_exact_blob(stream, _JSON_LIMIT, str(index_path)), str(index_path))
    except OSError as exc:
        raise ConfigError(f"cannot read {index_path}: {exc}") from exc
    where = "index.json"
    raw_manifests = index.get("manifests")
    if not isinstance(raw_manifests, list) or not raw_manifests:
        raise ConfigError(f"{where}: manifests must be a non-empty list")
    descriptors = [_Descriptor(m, f"{where}.manifests[{i}]") for i, m in enumerate(raw_manifests)]
    chosen = _select_from_index(descriptors, tag, where)
    for _ in range(_MAX_INDEX_DEPTH):
        data = layout.read_json_blob(chosen)
        document = _json(data, chosen.where)
        media_type = chosen.media_type or _str(document.get("mediaType"), chosen.where)
        if media_type in _INDEX_MEDIA:
            raw = document.get("manifests")
            if not isinstance(raw, list) or not raw:
                raise ConfigError(f"{chosen.where}: manifests must be a non-empty list")
            inner = [_Descriptor(m, f"{chosen.digest}.manifests[{i}]") for i, m in enumerate(raw)]
            chosen = _select_platform(inner, architecture, chosen.where)
            continue
        if media_type not in _MANIFEST_MEDIA:
            raise ConfigError(f"{chosen.where}: unsupported media type {media_type!r}")
        return _image_from_manifest(layout, chosen, document, source)
    raise ConfigError(f"{source}: image indexes nest deeper than {_MAX_INDEX_DEPTH}")


def _image_from_manifest(
    layout: _OCILayout, descriptor: _Descriptor, manifest: dict[str, Any], source: str
) -> Image:
    config_descriptor = _Descriptor(manifest.get("config"), f"{descriptor.digest}.config")
    config = parse_image_config(layout.read_json_blob(config_descriptor), config_descriptor.where)
    raw_layers = manifest.get("layers")
    if not isinstance(raw_layers, list):
        raise ConfigError(f"{descriptor.where}: layers must be a list")
    layer_descriptors = [
        _Descriptor(m, f"{descriptor.digest}.layers[{i}]") for i, m in enumerate(raw_layers)
    ]
    if len(layer_descriptors) != len(config.diff_ids):
        raise VerificationError(
            "diff_id_count_mismatch",
            f"{source}: {len(layer_descriptors)} layers but {len(config.diff_ids)} diff_ids",
        )
    layers: list[Layer] = []
    for d, diff_id in zip(layer_descriptors, config.diff_ids, strict=True):
        layer_compression(d.media_type)  # refuse unknown media types up front
        path = layout.blob_path(d.digest, d.where)
        if not path.is_file():
            raise ConfigError(f"{d.where}: blob {d.digest} is missing")
        layers.append(
            Layer(media_type=d.media_type, digest=d.digest, size=d.size, diff_id=diff_id, path=path)
        )
    return Image(
        source=source,
        kind="oci",
        config=config,
        layers=tuple(layers),
        config_digest=config_descriptor.digest,
        manifest_digest=descriptor.digest,
    )


# -- docker-archive -----------------------------------------------------------------------------


def _member_name(value: object, where: str) -> str:
    name = _str(value, where)
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts:
        raise VerificationError("malformed_archive_path", f"{where}: {name!r} is not a safe name")
    return str(pure)


def _blob_digest_from_name(name: str) -> str | None:
    # Docker 25+ writes blobs/sha256/<hex>; legacy archives use <hex>.json for the config.
    parts = PurePosixPath(name).parts
    if len(parts) == 3 and parts[0] == "blobs":
        return f"{parts[1]}:{parts[2]}"
    stem = PurePosixPath(name).name.removesuffix(".json")
    if len(parts) == 1 and name.endswith(".json") and len(stem) == 64:
        return f"sha256:{stem}"
    return None


def _open_docker_archive(path: Path, tag: str | None, source: str) -> Image:
    try:
        archive = tarfile.open(path, mode="r:*")
    except (OSError, tarfile.TarError) as exc:
        raise ConfigError(f"cannot open docker archive {path}: {exc}") from exc
    with archive:
        members = {}
        for entry_info in archive:
            members[str(PurePosixPath(entry_info.name))] = entry_info

        def resolve(name: str) -> tarfile.TarInfo | None:
            # Legacy `docker save` stores a layer shared by two images once and links the
            # second name to it with a relative symbolic link inside the archive.
            for _ in range(8):
                member = members.get(name)
                if member is None or not member.issym():
                    return member
                joined = PurePosixPath(name).parent / member.linkname
                parts: list[str] = []
                for part in joined.parts:
                    if part == "..":
                        if not parts:
                            return None
                        parts.pop()
                    elif part not in (".", "/"):
                        parts.append(part)
                name = "/".join(parts)
            return None

        def read_member(name: str, where: str) -> bytes:
            member = resolve(name)
            if member is None or not member.isfile():
                raise ConfigError(f"{source}: {where} names {name!r}, which is not in the archive")
            stream = archive.extractfile(member)
            if stream is None:
                raise ConfigError(f"{source}: cannot read {name!r}")
            return read_exact_blob(stream, _JSON_LIMIT, name)

        try:
            entries = json.loads(read_member("manifest.json", "the archive"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: manifest.json is not valid JSON: {exc}") from exc
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{source}: manifest.json must be a non-empty list")
        if tag is None:
            if len(entries) != 1:
                raise ConfigError(f"{source} holds {len(entries)} images; name one by tag")
            entry = entries[0]
        else:
            matching = [
                e
                for e in entries
                if isinstance(e, dict)
                and any(tag in (t, t.rpartition(":")[2]) for t in e.get("RepoTags") or [])
            ]
            if len(matching) != 1:
                raise ConfigError(f"{source}: no single image is tagged {tag!r}")
            entry = matching[0]
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: manifest.json entries must be objects")
        config_name = _member_name(entry.get("Config"), "manifest.json Config")
        config_data = read_member(config_name, "manifest.json Config")
        config_digest = _blob_digest_from_name(config_name)
        if config_digest is not None:
            check_digest(config_data, config_digest, f"{source}: {config_name}")
        config = parse_image_config(config_data, f"{source}: {config_name}")
        layer_names = entry.get("Layers")
        if not isinstance(layer_names, list):
            raise ConfigError(f"{source}: manifest.json Layers must be a list")
        if len(layer_names) != len(config.diff_ids):
            raise VerificationError(
                "diff_id_count_mismatch",
                f"{source}: {len(layer_names)} layers but {len(config.diff_ids)} diff_ids",
            )
        layers: list[Layer] = []
        for i, (raw_name, diff_id) in enumerate(zip(layer_names, config.diff_ids, strict=True)):
            name = _member_name(raw_name, f"manifest.json Layers[{i}]")
            member = resolve(name)
            if member is None or not member.isfile():
                raise ConfigError(f"{source}: layer {name!r} is not in the archive")
            stream = archive.extractfile(member)
            head = stream.read(4) if stream is not None else b""
            compression = sniff_compression(head)
            media_type = {
                "none": MEDIA_OCI_LAYER_TAR,
                "gzip": MEDIA_OCI_LAYER_GZIP,
                "zstd": MEDIA_OCI_LAYER_ZSTD,
            }[compression]
            digest = _blob_digest_from_name(name)
            if digest is not None:
                parse_digest(digest, f"{source}: {name}")
            layers.append(
                Layer(
                    media_type=media_type,
                    digest=digest,
                    size=member.size,
                    diff_id=diff_id,
                    path=path,
                    member=member.name,
                )
            )
    return Image(
        source=source,
        kind="docker-archive",
        config=config,
        layers=tuple(layers),
        config_digest=config_digest,
    )


# -- entry point --------------------------------------------------------------------------------


def _split_reference(rest: str, exists: Any) -> tuple[Path, str | None]:
    if exists(Path(rest)):
        return Path(rest), None
    base, sep, tag = rest.rpartition(":")
    if sep and base and tag and "/" not in tag and exists(Path(base)):
        return Path(base), tag
    raise ConfigError(f"{rest!r} does not exist")


def open_image(spec: str, *, architecture: str | None = None) -> Image:
    """Open an image given as ``oci:DIR[:TAG]``, ``docker-archive:FILE[:TAG]`` or ``dir:ROOTFS``.

    Args:
        spec: the image reference.
        architecture: which platform to take from a multi-platform index (default: the host's).

    Returns:
        The image with its parsed config and its layers (not yet read; their digests are
        checked when they are extracted or by :func:`verify_layers`).

    Raises:
        ConfigError: a malformed reference, a missing file, a malformed document.
        VerificationError: a blob whose digest or size does not match its descriptor.
    """
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ConfigError(f"image {spec!r}: expected oci:DIR, docker-archive:FILE or dir:ROOTFS")
    if kind == "oci":
        directory, tag = _split_reference(rest, Path.is_dir)
        return _open_oci(directory, tag, spec, architecture or host_architecture())
    if kind == "docker-archive":
        file, tag = _split_reference(rest, Path.is_file)
        return _open_docker_archive(file, tag, spec)
    if kind == "dir":
        root = Path(rest)
        if not root.is_dir():
            raise ConfigError(f"image {spec!r}: {root} is not a directory")
        return Image(source=spec, kind="dir", config=ImageConfig(), layers=(), rootfs=root)
    raise ConfigError(f"image {spec!r}: unknown source type {kind!r}")
