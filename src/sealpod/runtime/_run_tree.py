"""A private backing tree for packages with allowed (read-write passthrough) paths.

The unpacked tree in the layer cache is shared by every run of the same layers and must stay as
extracted. Allowed paths pass writes through to the backing tree, so a package that has any
gets a per-run copy: hard links for everything (instant, no extra space; trusted files are
read-only through the shield anyway), real copies for the regular files at or below an allowed
path (so writing them cannot change the shared inode), fresh directories everywhere (so files
created or removed there stay in the copy). The copy is removed when the run ends, like a
container's writable layer (or by the next run, after a SIGKILL); data meant to outlive a run
belongs on an encrypted volume.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sealpod.errors import ConfigError

_logger = logging.getLogger(__name__)


def _unshare(path: Path) -> None:
    """Replace a hard-linked regular file by a copy of its own."""
    copy = path.with_name(f".{path.name}.sealpod-copy")
    shutil.copy2(path, copy, follow_symlinks=False)
    st = path.lstat()
    os.chown(copy, st.st_uid, st.st_gid, follow_symlinks=False)
    os.replace(copy, path)


def private_tree(tree: Path, allowed: Sequence[str], parent: Path) -> tuple[Path, Path]:
    """A per-run copy of ``tree`` whose allowed paths share nothing with it.

    Returns:
        (the copy's root, the directory to remove when the run ends).

    Raises:
        ConfigError: the copy cannot be made.
    """
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale(parent)
        work = Path(tempfile.mkdtemp(prefix="run-", dir=parent))
    except OSError as exc:
        raise ConfigError(f"cannot create a run directory in {parent}: {exc}") from exc
    root = work / "rootfs"
    try:
        (work / "pid").write_text(str(os.getpid()))
        done = subprocess.run(
            ["cp", "-a", "--link", "--no-target-directory", str(tree), str(root)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ConfigError(f"cannot copy {tree} for this run: {done.stderr.strip()}")
        for path in allowed:
            target = root / path.lstrip("/")
            if target.is_symlink() or not target.exists():
                continue
            if target.is_file():
                _unshare(target)
                continue
            for dirpath, _dirnames, filenames in os.walk(target):
                for name in filenames:
                    candidate = Path(dirpath) / name
                    if stat.S_ISREG(candidate.lstat().st_mode):
                        _unshare(candidate)
    except BaseException:
        remove_tree(work)
        raise
    _logger.debug("private backing tree for allowed paths at %s", root)
    return root, work


def remove_stale(parent: Path) -> None:
    """Remove run directories left by runs that were killed (their process is gone)."""
    for work in parent.glob("run-*"):
        try:
            pid = int((work / "pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            _logger.info("removing %s, left by a run that was killed", work)
            remove_tree(work)
        except (OSError, ValueError):
            continue  # being created right now, or not ours to judge


def remove_tree(work: Path) -> None:
    """Remove a run directory (logged, never raised: the run's result matters more)."""
    try:
        shutil.rmtree(work)
    except OSError:
        _logger.warning("could not remove the run directory %s", work, exc_info=True)
