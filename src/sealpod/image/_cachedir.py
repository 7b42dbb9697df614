"""Where sealpod caches unpacked trees (kept apart from :mod:`sealpod.image.rootfs`, whose
image-writing imports ``sealpod run`` does not need)."""

from __future__ import annotations

import os
from pathlib import Path


def sealpod_cache_dir() -> Path:
    """The cache root: ``$SEALPOD_CACHE_DIR`` or the user's cache directory for sealpod."""
    override = os.environ.get("SEALPOD_CACHE_DIR")
    if override:
        return Path(override)
    import platformdirs  # only without the override (start-up time)

    return Path(platformdirs.user_cache_dir("sealpod"))
