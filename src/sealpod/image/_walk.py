"""Walking a directory as a sequence of tar entries, in a stable order, without following links."""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

from sealpod.errors import ConfigError


def directory_entries(root: Path) -> Iterator[tuple[tarfile.TarInfo, Path | None]]:
    """Yield ``(TarInfo, path of the content or None)`` for everything below ``root``.

    Entries come sorted by path (parents before children); a second name of an inode with
    several links becomes a hard link to the first name seen. Nothing is followed.

    Raises:
        ConfigError: ``root`` is not a directory or something cannot be read.
    """
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory")
    seen: dict[tuple[int, int], str] = {}

    def walk(directory: Path, prefix: str) -> Iterator[tuple[tarfile.TarInfo, Path | None]]:
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            raise ConfigError(f"cannot list {directory}: {exc}") from exc
        for name in names:
            path = directory / name
            arcname = f"{prefix}{name}"
            try:
                st = os.lstat(path)
            except OSError as exc:
                raise ConfigError(f"cannot stat {path}: {exc}") from exc
            info = tarfile.TarInfo(arcname)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = st.st_uid, st.st_gid
            info.mtime = int(st.st_mtime)
            content: Path | None = None
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    info.type = tarfile.LNKTYPE
                    info.linkname = seen[key]
                else:
                    seen[key] = arcname
                    info.type = tarfile.REGTYPE
                    info.size = st.st_size
                    content = path
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            elif stat.S_ISFIFO(st.st_mode):
                info.type = tarfile.FIFOTYPE
            else:
                continue  # sockets and the like have no tar representation
            yield info, content
            if info.type == tarfile.DIRTYPE:
                yield from walk(path, arcname + "/")

    yield from walk(root, "")
