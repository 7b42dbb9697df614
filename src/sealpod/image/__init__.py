"""Container images in and out: OCI image layouts, docker-archive tarballs, root directories.

* :func:`open_image` reads ``oci:DIR[:TAG]``, ``docker-archive:FILE[:TAG]`` and ``dir:ROOTFS``;
* :func:`extract_layers` applies the layers into a directory, refusing anything unsafe, and
  :func:`extract_cached` does it once per set of layers into ``$SEALPOD_CACHE_DIR/layers``;
* :func:`write_oci_layout` / :func:`write_docker_archive` write images deterministically, with
  layers from :func:`layer_from_directory` / :func:`layer_from_files`;
* :func:`build_debian_rootfs` builds (and caches) Debian root filesystems with debootstrap, and
  :func:`rootfs_to_image` packs one as an image.

Names are imported lazily (PEP 562): the run path needs only the unpack cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sealpod._internal.lazy import lazy_getattr

if TYPE_CHECKING:
    from sealpod.image.cache import extract_cached, layers_cache_key
    from sealpod.image.extract import extract_layers, verify_layers
    from sealpod.image.model import (
        ANNOTATION_REF_NAME,
        ExtractionSummary,
        Image,
        ImageConfig,
        Layer,
        LayerFile,
        SkippedEntry,
    )
    from sealpod.image.read import host_architecture, open_image, parse_image_config
    from sealpod.image.rootfs import (
        build_debian_rootfs,
        debian_mirror,
        rootfs_cache_key,
        rootfs_to_image,
        sealpod_cache_dir,
    )
    from sealpod.image.write import (
        WrittenImage,
        canonical_json,
        config_document,
        layer_from_directory,
        layer_from_files,
        write_docker_archive,
        write_oci_layout,
    )

_WHERE = {
    "extract_cached": "cache",
    "layers_cache_key": "cache",
    "extract_layers": "extract",
    "verify_layers": "extract",
    "ANNOTATION_REF_NAME": "model",
    "ExtractionSummary": "_records",
    "Image": "model",
    "ImageConfig": "model",
    "Layer": "model",
    "LayerFile": "_records",
    "SkippedEntry": "_records",
    "host_architecture": "read",
    "open_image": "read",
    "parse_image_config": "read",
    "build_debian_rootfs": "rootfs",
    "debian_mirror": "rootfs",
    "rootfs_cache_key": "rootfs",
    "rootfs_to_image": "rootfs",
    "sealpod_cache_dir": "_cachedir",
    "WrittenImage": "write",
    "canonical_json": "write",
    "config_document": "write",
    "layer_from_directory": "write",
    "layer_from_files": "write",
    "write_docker_archive": "write",
    "write_oci_layout": "write",
}

__all__ = [
    "ANNOTATION_REF_NAME",
    "ExtractionSummary",
    "Image",
    "ImageConfig",
    "Layer",
    "LayerFile",
    "SkippedEntry",
    "WrittenImage",
    "build_debian_rootfs",
    "canonical_json",
    "config_document",
    "debian_mirror",
    "extract_cached",
    "extract_layers",
    "host_architecture",
    "layer_from_directory",
    "layer_from_files",
    "layers_cache_key",
    "open_image",
    "parse_image_config",
    "rootfs_cache_key",
    "rootfs_to_image",
    "sealpod_cache_dir",
    "verify_layers",
    "write_docker_archive",
    "write_oci_layout",
]

__getattr__ = lazy_getattr(__name__, _WHERE)
