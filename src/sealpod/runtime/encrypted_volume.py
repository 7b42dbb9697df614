"""The shield's :class:`~sealpod.runtime.volumes.VolumeProvider` over an encrypted volume.

Unmodified programs read and write plaintext through the shield; the host directory only ever
holds the encrypted form (:mod:`sealpod.encfs.volume`: Gramine encrypted files under opaque
names, a signed record, a redo journal of ciphertext nodes). The volume key is given in memory
(from activation) and never written anywhere.

Commits: ``fsync`` and the last ``release`` of a written file commit the whole volume (the new
tag is reported to the tag authority before the commit counts); so do ``rename``, ``unlink``,
``mkdir`` and ``rmdir``, because programs rely on those being durable after they return (write
a temporary file, rename it over the old one). :meth:`EncryptedVolumeProvider.close` (unmount)
commits what is left.

Failures: a node or file that fails authentication, or a commit the authority refuses, gives
EIO to the application and a warning in the log; the volume then refuses further writes.
Namespace errors keep their errno (ENOENT, EEXIST, ENOTEMPTY, ...).

Open files keep their decrypted-node caches between calls (no re-opening per request); large
reads and writes go through in one call each (the shield passes up to 1 MiB).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sealpod.encfs.volume import TagAuthority, Volume
from sealpod.errors import SealpodError
from sealpod.runtime.volumes import VolumeStat

_logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class EncryptedVolumeProvider:
    """Serves one :class:`~sealpod.encfs.volume.Volume` through the shield.

    Calls come from the shield's single FUSE thread, one at a time.
    """

    def __init__(self, volume: Volume) -> None:
        self._volume = volume
        self._handles: dict[int, int] = {}  # provider handle -> volume inode
        self._next = 1

    @classmethod
    def open_volume(
        cls,
        directory: str | os.PathLike[str],
        key: bytes,
        name: str,
        *,
        expected_tag: bytes | None = None,
        tag_authority: TagAuthority | None = None,
    ) -> EncryptedVolumeProvider:
        """Open and verify the volume in ``directory`` (see :meth:`Volume.open`) for mounting.

        Raises:
            ConfigError: bad key, not a volume.
            VerificationError: the volume fails verification (``rollback_detected``, ...).
        """
        return cls(
            Volume.open(
                Path(directory), key, name, expected_tag=expected_tag, tag_authority=tag_authority
            )
        )

    @property
    def volume(self) -> Volume:
        """The volume served."""
        return self._volume

    def __repr__(self) -> str:
        return f"EncryptedVolumeProvider({self._volume!r})"

    def _call(self, what: str, action: Callable[[], _T]) -> _T:
        try:
            return action()
        except OSError:
            raise
        except SealpodError as exc:
            _logger.warning("encrypted volume %r: %s failed: %s", self._volume.name, what, exc)
            raise OSError(errno.EIO, os.strerror(errno.EIO)) from exc

    def _then_commit(self, action: Callable[..., None], *args: object) -> None:
        action(*args)
        self._volume.commit()

    def _inode(self, handle: int) -> int:
        inode = self._handles.get(handle)
        if inode is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return inode

    def getattr(self, path: str) -> VolumeStat:
        """See :class:`~sealpod.runtime.volumes.VolumeProvider`.

        Raises:
            FileNotFoundError: no such entry.
            OSError: EIO when the volume failed.
        """
        entry = self._call("getattr", lambda: self._volume.getattr(path))
        return VolumeStat(
            is_dir=entry.is_dir, size=entry.size, mode=entry.mode, mtime_ns=entry.mtime_ns
        )

    def readdir(self, path: str) -> list[str]:
        """See :class:`~sealpod.runtime.volumes.VolumeProvider`.

        Raises:
            FileNotFoundError / NotADirectoryError: as the volume.
        """
        return self._call("readdir", lambda: self._volume.listdir(path))

    def open(self, path: str, flags: int, mode: int) -> int:
        """See :class:`~sealpod.runtime.volumes.VolumeProvider`.

        Raises:
            FileNotFoundError, FileExistsError, IsADirectoryError: as POSIX ``open``.
            OSError: EIO when the file fails verification.
        """
        inode = self._call(
            "open",
            lambda: self._volume.open_file(
                path,
                create=bool(flags & os.O_CREAT),
                exclusive=bool(flags & os.O_EXCL),
                truncate=bool(flags & os.O_TRUNC) and (flags & os.O_ACCMODE) != os.O_RDONLY,
                mode=mode,
            ),
        )
        handle = self._next
        self._next += 1
        self._handles[handle] = inode
        return handle

    def read(self, handle: int, offset: int, size: int) -> bytes:
        """See :class:`~sealpod.runtime.volumes.VolumeProvider`.

        Raises:
            OSError: EBADF, EIO (a node fails authentication).
        """
        inode = self._inode(handle)
        return self._call("read", lambda: self._volume.read(inode, offset, size))

    def write(self, handle: int, offset: int, data: bytes) -> int:
        """See :class:`~sealpod.runtime.volumes.VolumeProvider`.

        Raises:
            OSError: EBADF, EIO.
        """
        inode = self._inode(handle)
        return self._call("write", lambda: self._volume.write(inode, offset, data))

    def truncate(self, path: str, size: int) -> None:
        """See :class:`~sealpod.runtime.volumes.VolumeProvider`.

        Raises:
            FileNotFoundError: no such file.
            OSError: EIO.
        """
        self._call("truncate", lambda: self._volume.truncate(path, size))

    def fsync(self, handle: int) -> None:
        """Commit the volume (see the module docstring).

        Raises:
            OSError: EBADF, EIO (the commit failed or was refused).
        """
        self._inode(handle)
        self._call("commit", self._volume.commit)

    def release(self, handle: int) -> None:
        """Close ``handle``; commit if the volume has changes.

        Raises:
            OSError: EIO (the commit failed or was refused).
        """
        if self._handles.pop(handle, None) is None:
            return
        if self._volume.changed:
            self._call("commit", self._volume.commit)

    def mkdir(self, path: str, mode: int) -> None:
        """See :class:`~sealpod.runtime.volumes.VolumeProvider` (committed).

        Raises:
            FileExistsError, FileNotFoundError: as POSIX ``mkdir``.
            OSError: EIO.
        """
        self._call("mkdir", lambda: self._then_commit(self._volume.mkdir, path, mode))

    def unlink(self, path: str) -> None:
        """See :class:`~sealpod.runtime.volumes.VolumeProvider` (committed).

        Raises:
            FileNotFoundError, IsADirectoryError: as POSIX ``unlink``.
            OSError: EIO.
        """
        self._call("unlink", lambda: self._then_commit(self._volume.unlink, path))

    def rmdir(self, path: str) -> None:
        """See :class:`~sealpod.runtime.volumes.VolumeProvider` (committed).

        Raises:
            FileNotFoundError, NotADirectoryError: as POSIX ``rmdir``.
            OSError: ENOTEMPTY, EIO.
        """
        self._call("rmdir", lambda: self._then_commit(self._volume.rmdir, path))

    def rename(self, old: str, new: str) -> None:
        """See :class:`~sealpod.runtime.volumes.VolumeProvider` (committed).

        Raises:
            FileNotFoundError, IsADirectoryError, NotADirectoryError: as POSIX ``rename``.
            OSError: ENOTEMPTY, EINVAL, EIO.
        """
        self._call("rename", lambda: self._then_commit(self._volume.rename, old, new))

    def close(self) -> None:
        """Commit what is left and close the volume (at unmount). Idempotent.

        Raises:
            SealpodError: the final commit failed or was refused.
        """
        self._handles.clear()
        self._volume.close()
