"""Container images in and out: OCI image layouts, docker-archive tarballs, root directories.

* :func:`open_image` reads ``oci:DIR[:TAG]``, ``docker-archive:FILE[:TAG]`` and ``dir:ROOTFS``;
* :func:`extract_layers` applies the layers into a directory, refusing anything unsafe, and
  :func:`extract_cached` does it once per set of layers into ``$SEALPOD_CACHE_DIR/layers``;
* :func:`write_oci_layout` / :func:`write_docker_archive` write images deterministically, with
  layers from :func:`layer_from_directory` / :func:`layer_from_files`;
* :func:`build_debian_rootfs` builds (and caches) Debian root filesystems with debootstrap, and
  :func:`rootfs_to_image` packs one as an image.
"""

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
