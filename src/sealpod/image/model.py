"""The data types of container images: configuration, layers, images, extraction summaries."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, TYPE_CHECKING, Literal, cast

from sealpod._internal.lazy import lazy_getattr
from sealpod.errors import ConfigError

# OCI image spec, media-types.md; Docker image manifest v2 schema 2.
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

#: OCI image-layout annotation naming a manifest in index.json (annotations.md).
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

Compression = Literal["none", "gzip", "zstd"]

_LAYER_COMPRESSION: dict[str, Compression] = {
    MEDIA_OCI_LAYER_TAR: "none",
    MEDIA_OCI_LAYER_GZIP: "gzip",
    MEDIA_OCI_LAYER_ZSTD: "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    MEDIA_DOCKER_LAYER_GZIP: "gzip",
    MEDIA_DOCKER_LAYER_FOREIGN: "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
}

_MEDIA_FOR_COMPRESSION: dict[Compression, str] = {
    "none": MEDIA_OCI_LAYER_TAR,
    "gzip": MEDIA_OCI_LAYER_GZIP,
    "zstd": MEDIA_OCI_LAYER_ZSTD,
}


def layer_compression(media_type: str) -> Compression:
    """The compression a layer media type declares.

    Raises:
        ConfigError: the media type is not a layer type sealpod understands.
    """
    try:
        return _LAYER_COMPRESSION[media_type]
    except KeyError:
        raise ConfigError(f"unsupported layer media type {media_type!r}") from None


def media_type_for(compression: Compression) -> str:
    """The OCI layer media type for a compression."""
    return _MEDIA_FOR_COMPRESSION[compression]


def _frozen_mapping(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(value or {}))


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """What an image says about how to run it (the ``config`` of the OCI image config).

    ``raw_json`` keeps the whole original configuration document so that writers preserve the
    fields sealpod does not model (history, healthchecks, ...).
    """

    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    architecture: str = "amd64"
    os: str = "linux"
    diff_ids: tuple[str, ...] = ()
    raw_json: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen_mapping(self.labels))

    @property
    def argv(self) -> tuple[str, ...]:
        """Entrypoint followed by Cmd, as a container engine would start the image."""
        return (self.entrypoint or ()) + (self.cmd or ())


@dataclass(frozen=True, kw_only=True)
class Layer:
    """One layer blob: its descriptor, the digest of its uncompressed tar, and where it lives.

    ``digest`` is ``None`` only for legacy docker-archive layers whose file name is not their
    digest; those are checked through ``diff_id`` alone.
    """

    media_type: str
    digest: str | None
    size: int | None
    diff_id: str
    path: Path
    member: str | None = None  # a member of the tar archive at ``path`` (docker-archive)

    @property
    def compression(self) -> Compression:
        """How the blob is compressed.

        Raises:
            ConfigError: the media type is unknown.
        """
        return layer_compression(self.media_type)

    def open_blob(self) -> IO[bytes]:
        """The (compressed) blob, as stored.

        Raises:
            ConfigError: the blob cannot be read.
        """
        try:
            if self.member is None:
                return open(self.path, "rb")
            archive = tarfile.open(self.path, mode="r:*")
            extracted = archive.extractfile(self.member)
            if extracted is None:
                archive.close()
                raise ConfigError(f"{self.path}: {self.member} is not a regular file")
            return cast(IO[bytes], _ClosingReader(extracted, archive))
        except (OSError, tarfile.TarError, KeyError) as exc:
            where = f"{self.path}:{self.member}" if self.member else str(self.path)
            raise ConfigError(f"cannot read layer blob {where}: {exc}") from exc


class _ClosingReader(io.RawIOBase):
    """A member of a tar archive that closes the archive with itself."""

    def __init__(self, inner: IO[bytes], archive: tarfile.TarFile) -> None:
        super().__init__()
        self._inner = inner
        self._archive = archive

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
            self._archive.close()
        super().close()


ImageKind = Literal["oci", "docker-archive", "dir"]


@dataclass(frozen=True, kw_only=True)
class Image:
    """An image opened by :func:`sealpod.image.open_image`.

    For ``dir:`` images ``layers`` is empty and ``rootfs`` names the directory.
    """

    source: str
    kind: ImageKind
    config: ImageConfig
    layers: tuple[Layer, ...]
    config_digest: str | None = None
    manifest_digest: str | None = None
    rootfs: Path | None = None


# Extraction and layer-writing records live in sealpod.image._records: the run path (which
# reads images but neither extracts on a cache hit nor writes) does not build them at start-up.
if TYPE_CHECKING:
    from sealpod.image._records import ExtractionSummary as ExtractionSummary
    from sealpod.image._records import LayerFile as LayerFile
    from sealpod.image._records import SkippedEntry as SkippedEntry

__getattr__ = lazy_getattr(
    __name__.rpartition(".")[0],
    {"ExtractionSummary": "_records", "LayerFile": "_records", "SkippedEntry": "_records"},
)
