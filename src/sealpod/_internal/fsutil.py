"""Durable, atomic file writes: a file holds its old content or all of the new, never a part.

The temporary file is created with its final mode from the start (a key is never, even briefly,
in a more readable file), written, fsynced, renamed (or hard-linked when the target must not
exist yet), and the directory is fsynced so the rename itself survives a crash.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames and creations inside it are durable.

    Raises:
        OSError: the directory cannot be opened or synced.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644, overwrite: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically and durably, with exactly ``mode``.

    With ``overwrite=False`` an existing ``path`` is left alone and :class:`FileExistsError`
    raised (the check and the creation are one atomic step).

    Raises:
        FileExistsError: ``overwrite`` is false and ``path`` exists.
        OSError: the file cannot be written (the caller translates it).
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)  # os.open's mode is filtered by the umask
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
            tmp.unlink()
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
