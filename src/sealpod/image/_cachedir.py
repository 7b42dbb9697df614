"""Where sealpod caches unpacked trees (kept apart from :mod:`sealpod.image.rootfs`, whose
image-writing imports ``sealpod run`` does not need)."""

from __future__ import annotations

import os
import posixpath
import sys
from pathlib import Path


def sealpod_cache_dir() -> Path:
    """The cache root: ``$SEALPOD_CACHE_DIR`` or the user's cache directory for sealpod."""
    override = os.environ.get("SEALPOD_CACHE_DIR")
    if override:
        return Path(override)
    return _user_cache_dir()


def _user_cache_dir() -> Path:
    """``platformdirs.user_cache_dir("sealpod")``.

    On Linux with an absolute ``$XDG_CACHE_HOME`` or ``$HOME`` this is the XDG base directory
    rule platformdirs applies (``$XDG_CACHE_HOME/sealpod``, else ``~/.cache/sealpod``), taken
    here without importing platformdirs, which costs milliseconds at every ``sealpod run``;
    anything else (other systems, Android, no usable home) asks platformdirs. A unit test holds
    the two to the same answers.
    """
    android = hasattr(sys, "getandroidapilevel") or (
        os.environ.get("ANDROID_DATA") == "/data" and os.environ.get("ANDROID_ROOT") == "/system"
    )
    if sys.platform == "linux" and not android:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        if posixpath.isabs(xdg):
            return Path(xdg, "sealpod")
        if posixpath.isabs(os.environ.get("HOME", "")):
            return Path(os.path.expanduser("~/.cache"), "sealpod")
    import platformdirs

    return Path(platformdirs.user_cache_dir("sealpod"))
