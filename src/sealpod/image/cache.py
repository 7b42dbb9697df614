"""Extracted root filesystems cached by the diff_ids of their layers.

``$SEALPOD_CACHE_DIR/layers/<key>`` holds the tree of an image whose uncompressed layers have
the diff_ids hashed into ``key`` (with the owner mode), so the same layers are unpacked once
whatever format or compression they came in. Invariants, as for the root filesystem cache:
an entry is complete or absent (extracted into a temporary directory, then renamed), one
``flock(2)`` per entry serialises concurrent extractions, and an entry exists only if every
layer's digest and diff_id matched while it was extracted.

Cached trees are shared: treat them as read-only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from sealpod.errors import ConfigError
from sealpod.image._cachedir import sealpod_cache_dir

if TYPE_CHECKING:
    from sealpod.image.model import Image

_logger = logging.getLogger(__name__)


def layers_cache_key(image: Image, *, preserve_owners: bool) -> str:
    """The cache key of the tree ``image``'s layers extract to.

    Raises:
        ConfigError: the image has no layers (a ``dir:`` image is its own tree).
    """
    if not image.layers:
        raise ConfigError(f"{image.source} has no layers to cache")
    text = "\n".join(
        ["sealpod-layers-v1", f"owners={int(preserve_owners)}", *image.config.diff_ids]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _force_rmtree(path: Path) -> None:
    # Extracted trees can hold read-only directories; without root, make them writable first
    # (os.walk is top-down, so each directory is opened up before it is entered).
    if not path.exists():
        return
    import shutil

    if os.geteuid() != 0:
        os.chmod(path, stat.S_IMODE(path.lstat().st_mode) | stat.S_IRWXU)
        for dirpath, dirnames, _files in os.walk(path):
            for name in dirnames:
                child = os.path.join(dirpath, name)
                if not os.path.islink(child):
                    os.chmod(child, stat.S_IMODE(os.lstat(child).st_mode) | stat.S_IRWXU)
    shutil.rmtree(path)


def extract_cached(
    image: Image, cache_dir: Path | None = None, *, preserve_owners: bool | None = None
) -> Path:
    """The extracted tree of ``image``, unpacked once into the layer cache.

    Args:
        image: an image with layers (``oci:`` or ``docker-archive:``).
        cache_dir: the cache root; default ``$SEALPOD_CACHE_DIR`` or the user's cache dir.
        preserve_owners: as for :func:`extract_layers` (default: when running as root).

    Returns:
        ``<cache>/layers/<key>``; do not modify it.

    Raises:
        ConfigError: a ``dir:`` image, or the cache cannot be written.
        VerificationError: a layer fails its digest or diff_id check, or holds an unsafe
            entry; nothing is cached then.
    """
    owners = os.geteuid() == 0 if preserve_owners is None else preserve_owners
    key = layers_cache_key(image, preserve_owners=owners)
    root = (cache_dir if cache_dir is not None else sealpod_cache_dir()) / "layers"
    final = root / key
    if final.is_dir():
        return final
    # A miss: only now the extraction machinery (``sealpod run`` normally finds its tree).
    import fcntl
    import tempfile

    from sealpod.image.extract import extract_layers

    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f"{key}.lock", "a+b")
    except OSError as exc:
        raise ConfigError(f"cannot use the layer cache {root}: {exc}") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        for stale in root.glob(f".extract-{key}-*"):
            _force_rmtree(stale)
        work = Path(tempfile.mkdtemp(prefix=f".extract-{key}-", dir=root))
        try:
            tree = work / "rootfs"
            tree.mkdir()
            summary = extract_layers(image, tree, preserve_owners=owners)
            os.rename(tree, final)
        finally:
            _force_rmtree(work)
    _logger.info("cached %s as %s (%d files)", image.source, final, summary.files)
    return final
