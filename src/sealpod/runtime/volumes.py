"""The hook through which encrypted volumes (or any other backing) are mounted in the shield.

A :class:`VolumeProvider` serves one directory tree at a mount path of the shield. The shield
translates FUSE requests below that path into calls on the provider with paths relative to the
mount ("/" is the mount itself, "/a/b" a file in it). Calls come from the shield's single FUSE
thread, one at a time, so a provider needs no locking of its own. Providers report failures by
raising :class:`OSError` with the errno the application should see (``FileNotFoundError``,
``IsADirectoryError``, ``OSError(errno.ENOSPC, ...)``); anything else becomes EIO and a log line.

:class:`InMemoryVolume` is the reference provider: a complete, trivial implementation that keeps
everything in memory. Tests use it to exercise the hook; encrypted volumes follow its behaviour.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class VolumeStat:
    """What the shield needs to know about one entry of a volume."""

    is_dir: bool
    size: int
    #: Permission bits only (``0o644``); the type comes from ``is_dir``.
    mode: int
    mtime_ns: int


@runtime_checkable
class VolumeProvider(Protocol):
    """One mounted tree. Paths are volume-relative, absolute and normalised ("/", "/a/b")."""

    def getattr(self, path: str) -> VolumeStat:
        """The entry at ``path``; raise ``FileNotFoundError`` when there is none."""
        ...

    def readdir(self, path: str) -> list[str]:
        """Names in the directory at ``path`` (without "." and "..")."""
        ...

    def open(self, path: str, flags: int, mode: int) -> int:
        """Open (honouring ``O_CREAT``, ``O_EXCL``, ``O_TRUNC``) and return a handle."""
        ...

    def read(self, handle: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``."""
        ...

    def write(self, handle: int, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset`` (extending with zeros); return the count written."""
        ...

    def truncate(self, path: str, size: int) -> None:
        """Set the size of the file at ``path``."""
        ...

    def fsync(self, handle: int) -> None:
        """Commit what was written through ``handle``."""
        ...

    def release(self, handle: int) -> None:
        """Close ``handle`` (committing like :meth:`fsync`)."""
        ...

    def mkdir(self, path: str, mode: int) -> None:
        """Create a directory."""
        ...

    def unlink(self, path: str) -> None:
        """Remove a file."""
        ...

    def rmdir(self, path: str) -> None:
        """Remove an empty directory."""
        ...

    def rename(self, old: str, new: str) -> None:
        """Move ``old`` to ``new``, replacing a file at ``new``."""
        ...


@dataclass
class _MemEntry:
    is_dir: bool
    mode: int
    data: bytearray = field(default_factory=bytearray)
    mtime_ns: int = field(default_factory=time.time_ns)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


class InMemoryVolume:
    """A :class:`VolumeProvider` that keeps a whole tree in memory (reference and test fake)."""

    def __init__(self) -> None:
        self._entries: dict[str, _MemEntry] = {"/": _MemEntry(is_dir=True, mode=0o755)}
        self._handles: dict[int, str] = {}
        self._next = 1
        #: How many times :meth:`fsync` or :meth:`release` committed, for tests.
        self.commits = 0

    def files(self) -> dict[str, bytes]:
        """A snapshot of every regular file's content, by path."""
        return {p: bytes(e.data) for p, e in self._entries.items() if not e.is_dir}

    def _get(self, path: str) -> _MemEntry:
        entry = self._entries.get(path)
        if entry is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return entry

    def _dir(self, path: str) -> _MemEntry:
        entry = self._get(path)
        if not entry.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        return entry

    def getattr(self, path: str) -> VolumeStat:
        """See :class:`VolumeProvider`.

        Raises:
            FileNotFoundError: no such entry.
        """
        e = self._get(path)
        return VolumeStat(is_dir=e.is_dir, size=len(e.data), mode=e.mode, mtime_ns=e.mtime_ns)

    def readdir(self, path: str) -> list[str]:
        """See :class:`VolumeProvider`.

        Raises:
            FileNotFoundError: no such directory.
            NotADirectoryError: ``path`` is a file.
        """
        self._dir(path)
        return sorted(p.rsplit("/", 1)[1] for p in self._entries if p != "/" and _parent(p) == path)

    def open(self, path: str, flags: int, mode: int) -> int:
        """See :class:`VolumeProvider`.

        Raises:
            FileNotFoundError: no such file and no ``O_CREAT``.
            FileExistsError: ``O_CREAT | O_EXCL`` on an existing file.
            IsADirectoryError: ``path`` is a directory.
        """
        entry = self._entries.get(path)
        if entry is None:
            if not flags & os.O_CREAT:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            self._dir(_parent(path))
            entry = self._entries[path] = _MemEntry(is_dir=False, mode=stat.S_IMODE(mode))
        elif flags & os.O_CREAT and flags & os.O_EXCL:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        if entry.is_dir:
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if flags & os.O_TRUNC:
            del entry.data[:]
        handle = self._next
        self._next += 1
        self._handles[handle] = path
        return handle

    def _file(self, handle: int) -> _MemEntry:
        path = self._handles.get(handle)
        if path is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return self._get(path)

    def read(self, handle: int, offset: int, size: int) -> bytes:
        """See :class:`VolumeProvider`.

        Raises:
            OSError: EBADF for an unknown handle.
        """
        return bytes(self._file(handle).data[offset : offset + size])

    def write(self, handle: int, offset: int, data: bytes) -> int:
        """See :class:`VolumeProvider`.

        Raises:
            OSError: EBADF for an unknown handle.
        """
        entry = self._file(handle)
        if offset > len(entry.data):
            entry.data.extend(bytes(offset - len(entry.data)))
        entry.data[offset : offset + len(data)] = data
        entry.mtime_ns = time.time_ns()
        return len(data)

    def truncate(self, path: str, size: int) -> None:
        """See :class:`VolumeProvider`.

        Raises:
            FileNotFoundError: no such file.
        """
        entry = self._get(path)
        if size < len(entry.data):
            del entry.data[size:]
        else:
            entry.data.extend(bytes(size - len(entry.data)))
        entry.mtime_ns = time.time_ns()

    def fsync(self, handle: int) -> None:
        """See :class:`VolumeProvider`.

        Raises:
            OSError: EBADF for an unknown handle.
        """
        self._file(handle)
        self.commits += 1

    def release(self, handle: int) -> None:
        """See :class:`VolumeProvider`."""
        if self._handles.pop(handle, None) is not None:
            self.commits += 1

    def mkdir(self, path: str, mode: int) -> None:
        """See :class:`VolumeProvider`.

        Raises:
            FileExistsError: ``path`` exists.
            FileNotFoundError: the parent does not exist.
        """
        if path in self._entries:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        self._dir(_parent(path))
        self._entries[path] = _MemEntry(is_dir=True, mode=stat.S_IMODE(mode))

    def unlink(self, path: str) -> None:
        """See :class:`VolumeProvider`.

        Raises:
            FileNotFoundError: no such file.
            IsADirectoryError: ``path`` is a directory.
        """
        if self._get(path).is_dir:
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        del self._entries[path]

    def rmdir(self, path: str) -> None:
        """See :class:`VolumeProvider`.

        Raises:
            FileNotFoundError: no such directory.
            OSError: ENOTEMPTY when it has entries.
        """
        self._dir(path)
        if self.readdir(path):
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), path)
        del self._entries[path]

    def rename(self, old: str, new: str) -> None:
        """See :class:`VolumeProvider`.

        Raises:
            FileNotFoundError: ``old`` or the new parent does not exist.
        """
        entry = self._get(old)
        self._dir(_parent(new))
        moved = {p: e for p, e in self._entries.items() if p == old or p.startswith(old + "/")}
        for p in moved:
            del self._entries[p]
        for p, e in moved.items():
            self._entries[new + p[len(old) :]] = e
        self._entries[new] = entry
        for h, p in list(self._handles.items()):
            if p == old or p.startswith(old + "/"):
                self._handles[h] = new + p[len(old) :]
