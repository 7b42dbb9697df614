"""The shield: a FUSE filesystem that is the sandbox's root and enforces the enclave policy.

It serves a *backing rootfs directory* (the unpacked image) under a :class:`ShieldPolicy`:

* **Trusted files** (path -> SHA-256) are served read-only and only while their content matches
  the hash. A file is opened once, hashed from that descriptor, and every later read is served
  from the same descriptor after checking each 1 MiB chunk against the Poly1305 tag recorded
  (under a secret per-chunk key) during the whole-file check (see :mod:`sealpod.runtime._trusted` for the exact TOCTOU
  argument). A mismatch at open gives EACCES, a mismatch at read gives EIO; both log a warning and
  never deliver the tampered bytes. The whole-file check is cached under (device, inode, size,
  mtime_ns, ctime_ns) and redone when those change. The chunks the check at an open read are
  served once to that handle's first reads while the file is unchanged (they are the bytes that
  matched; :mod:`sealpod.runtime._trusted`). The trusted tree is built per directory on first
  access, each entry's type (file or link) fixed by the policy's ``trusted_links``. Writing, truncating, renaming or removing a
  trusted file gives EROFS.
* **Trusted symbolic links** are served as links. Their manifest hash is the SHA-256 of the target
  string's bytes; the target is re-read and re-checked on every ``readlink``. Whether a trusted
  path is a file or a link is fixed before anything is served: by the policy's ``trusted_links``
  (the measured manifest's types; ``sealpod run``) or, without them, by the backing rootfs when
  the shield is mounted. A different type found later is refused.
* **Allowed** paths (a path allows itself and everything below it) pass through read-write to the
  backing directory. New files are owned by the calling uid/gid.
* **tmpfs** paths are in-memory directories; **memory files** (secrets delivered at activation)
  are in-memory files. Neither ever reaches the host disk through the shield. (The kernel may
  cache their pages in RAM, never on disk; the shield process's own memory is not locked.)
* **Volumes** (mount path -> :class:`~sealpod.runtime.volumes.VolumeProvider`) serve a subtree
  through a provider, the hook for encrypted volumes.
* Anything else **does not exist** for the application: ENOENT, and not listed by ``readdir``.
  Directories that lead to a trusted, allowed, tmpfs, memory or volume path exist (read-only).

Precedence for one path: memory file > volume > tmpfs > trusted > allowed.

Kernel caching: trusted files are opened with ``keep_cache``: every page the kernel caches came
from a chunk the shield verified, and a trusted path has exactly one valid content (its hash), so
cached pages can never be tampered bytes. Passthrough, memory and volume files are opened without
``keep_cache`` (the page cache is dropped on each open). Read requests are up to 1 MiB: the
session asks for ``max_pages`` 256 and the shield raises the mount's readahead to 1 MiB
(``read_ahead_kb``, as root).

Permissions: the mount is made with ``allow_other`` and without ``default_permissions``: the
shield enforces the *policy* (what exists, what is writable), not Unix permission bits; inside a
sandbox every process is the application.

Life cycle: :meth:`Shield.mount` serves the FUSE session (:mod:`sealpod.runtime._fuse`, the
kernel protocol spoken directly; no libfuse, no event loop) on two background threads of the
calling process; handlers run one at a time under one lock, which the whole-file check of a
large trusted file drops while it hashes. Several shields may be mounted in one process. The
mount uses ``fusermount3``'s ``auto_unmount``: the helper removes the mount if the owning process
dies, even by SIGKILL. :meth:`Shield.unmount` detaches the mount, stops the session and, when
the shield created its own mountpoint, removes it; it falls back to a lazy ``fusermount3 -u -z``
/ ``umount -l``.
"""

from __future__ import annotations

import atexit
import bisect
import dataclasses
import errno
import functools
import itertools
import logging
import os
import posixpath
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Concatenate, ParamSpec, TypeVar

from sealpod.errors import ConfigError, EnvironmentUnavailableError
from sealpod.runtime import _fuse as fuse
from sealpod.runtime._trusted import (
    TrustedFileModifiedError,
    TrustedReader,
    VerificationCache,
    symlink_target_digest,
)
from sealpod.runtime.policy import ShieldPolicy as ShieldPolicy
from sealpod.runtime.policy import is_under
from sealpod.runtime.sandbox import Sandbox
from sealpod.runtime.volumes import VolumeProvider

_logger = logging.getLogger(__name__)

_SHA256_HEX = frozenset("0123456789abcdef")
#: Seconds the kernel may cache attributes and names. Short: the backing tree is untrusted.
_TIMEOUT = 1.0
_READAHEAD_KB = 1024
_BLKSIZE = 1 << 20
#: Trusted files up to this size are verified on the FUSE thread (no worker-thread hop).
_INLINE_VERIFY = 256 << 10
#: The chunks a verification at open just read are kept for the first reads of that handle
#: (no second read and tag check), for files up to _KEEP_PER_FILE and up to _KEEP_TOTAL bytes
#: over all open handles.
_KEEP_PER_FILE = 16 << 20
_KEEP_TOTAL = 64 << 20


class _Kind(Enum):
    DIR = "dir"  # a directory of the policy tree (leads to something, maybe allowed)
    TRUSTED = "trusted"
    TRUSTED_LINK = "trusted-link"
    BACKED = "backed"  # found by lookup below an allowed directory
    MEM_DIR = "mem-dir"
    MEM_FILE = "mem-file"
    MEM_LINK = "mem-link"
    VOLUME = "volume"


@dataclass(eq=False)
class _Mem:
    mode: int
    uid: int
    gid: int
    data: bytearray = field(default_factory=bytearray, repr=False)
    target: bytes = b""
    mtime_ns: int = field(default_factory=time.time_ns)
    ctime_ns: int = field(default_factory=time.time_ns)


@dataclass(eq=False)
class _Node:
    ino: int
    kind: _Kind
    name: bytes
    parent: _Node | None
    static: bool = True
    allowed: bool = False
    expected: str = ""
    kids: dict[bytes, _Node] = field(default_factory=dict, repr=False)
    mem: _Mem | None = field(default=None, repr=False)
    provider: VolumeProvider | None = field(default=None, repr=False)
    volume_root: _Node | None = field(default=None, repr=False)
    #: Fills ``kids`` from the trusted-path index on first use (policy directories).
    loader: Callable[[_Node], None] | None = field(default=None, repr=False)

    @property
    def children(self) -> dict[bytes, _Node]:
        """The entries of this directory (the trusted ones are added on first access)."""
        loader = self.loader
        if loader is not None:
            self.loader = None
            loader(self)
        return self.kids

    def path(self) -> bytes:
        parts: list[bytes] = []
        node: _Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return b"/" + b"/".join(reversed(parts))

    def display(self) -> str:
        return os.fsdecode(self.path())

    def volume_path(self) -> str:
        """The path relative to the volume this node belongs to."""
        parts: list[bytes] = []
        node: _Node | None = self
        while node is not None and node is not self.volume_root:
            parts.append(node.name)
            node = node.parent
        return "/" + os.fsdecode(b"/".join(reversed(parts)))


class _TrustedHandle:
    def __init__(self, reader: TrustedReader) -> None:
        self.reader = reader


class _FdHandle:
    def __init__(self, fd: int) -> None:
        self.fd = fd


class _MemHandle:
    def __init__(self, node: _Node) -> None:
        self.node = node


class _VolumeHandle:
    def __init__(self, provider: VolumeProvider, handle: int) -> None:
        self.provider = provider
        self.handle = handle


_Handle = _TrustedHandle | _FdHandle | _MemHandle | _VolumeHandle
_P = ParamSpec("_P")
_R = TypeVar("_R")
_FS = TypeVar("_FS", bound="_ShieldOperations")


def _fuse_error(code: int) -> fuse.FUSEError:
    return fuse.FUSEError(code)


def _boundary(
    fn: Callable[Concatenate[_FS, _P], _R],
) -> Callable[Concatenate[_FS, _P], _R]:
    """Turn every failure of a handler into an errno, logging the unexpected ones."""

    def wrapper(self: _FS, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(self, *args, **kwargs)
        except fuse.FUSEError:
            raise
        except TrustedFileModifiedError as exc:
            _logger.warning("shield refused a trusted file: %s", exc)
            raise _fuse_error(errno.EIO) from None
        except OSError as exc:
            raise _fuse_error(exc.errno or errno.EIO) from None
        except Exception:
            _logger.exception("shield: internal error in %s", fn.__name__)
            raise _fuse_error(errno.EIO) from None

    functools.update_wrapper(wrapper, fn)
    return wrapper


def _refuse(code: int, node_path: str, why: str) -> fuse.FUSEError:
    _logger.warning("shield refused %s: %s", node_path, why)
    return _fuse_error(code)


class _ShieldOperations:
    """The FUSE request handlers. The session calls them holding ``lock``, one at a time."""

    def __init__(self, policy: ShieldPolicy, lock: threading.Lock) -> None:
        self._policy = policy
        self._lock = lock
        self._root_b = os.fsencode(str(policy.backing_root))
        self._inos = itertools.count(fuse.ROOT_INODE + 1)
        self._nodes: dict[int, _Node] = {}
        self._handles: dict[int, _Handle] = {}
        self._dirs: dict[int, list[tuple[bytes, fuse.EntryAttributes]]] = {}
        self._fhs = itertools.count(1)
        self._verified = VerificationCache()
        self._trusted_keys = sorted(policy.trusted)
        self._trusted_links = self._link_paths(policy)
        self.root = self._add(
            _Node(fuse.ROOT_INODE, _Kind.DIR, b"", None, loader=self._load_trusted)
        )
        self._build()

    # -- the policy tree ------------------------------------------------------------------

    def _add(self, node: _Node) -> _Node:
        self._nodes[node.ino] = node
        if node.parent is not None:
            node.parent.kids[node.name] = node
        return node

    def _kid(self, parent: _Node, name: bytes) -> _Node | None:
        """The child ``name`` of ``parent``, adding just that trusted entry if it is one.

        A lookup needs one entry, not the whole directory (a Python start-up looks into
        directories of hundreds of trusted files): one dictionary probe and one bisection."""
        kid = parent.kids.get(name)
        if kid is not None or parent.loader is None:
            return kid
        return self._trusted_child(parent, os.fsdecode(parent.path()).rstrip("/") + "/", name)

    def _trusted_child(self, parent: _Node, prefix: str, name: bytes) -> _Node | None:
        """Add ``prefix + name`` below ``parent`` if the policy has it: a trusted file or
        link, or a directory leading to trusted paths (found by bisection)."""
        path = prefix + os.fsdecode(name)
        expected = self._policy.trusted.get(path)
        if expected is not None:
            kind = _Kind.TRUSTED_LINK if path in self._trusted_links else _Kind.TRUSTED
            return self._new(kind, name, parent, expected=expected)
        keys = self._trusted_keys
        i = bisect.bisect_left(keys, path + "/")
        if i < len(keys) and keys[i].startswith(path + "/"):
            return self._new(
                _Kind.DIR,
                name,
                parent,
                allowed=parent.allowed or path in self._policy.allowed,
                loader=self._load_trusted,
            )
        return None

    def _new(self, kind: _Kind, name: bytes, parent: _Node, **kw: object) -> _Node:
        return self._add(_Node(next(self._inos), kind, name, parent, **kw))  # type: ignore[arg-type]

    def _mem(self, mode: int) -> _Mem:
        uid, gid = self._policy.owner
        return _Mem(mode=mode, uid=uid, gid=gid)

    def _ensure_dir(self, path: str) -> _Node:
        node = self.root
        for part in (p for p in path.split("/") if p):
            name = os.fsencode(part)
            child = node.children.get(name)
            if child is None:
                if node.kind is _Kind.MEM_DIR:
                    child = self._new(
                        _Kind.MEM_DIR, name, node, mem=self._mem(stat.S_IFDIR | 0o700)
                    )
                else:
                    child = self._new(_Kind.DIR, name, node, loader=self._load_trusted)
            elif child.kind not in (_Kind.DIR, _Kind.MEM_DIR):
                raise ConfigError(f"shield policy: {path} passes through a non-directory entry")
            node = child
        return node

    def _link_paths(self, policy: ShieldPolicy) -> frozenset[str]:
        """The trusted paths served as symbolic links: the policy's (from the measured
        manifest) or, without them, what the backing tree holds now, at mount time."""
        if policy.trusted_links is not None:
            return policy.trusted_links
        links = []
        for path in self._trusted_keys:
            try:
                if stat.S_ISLNK(os.lstat(self._root_b + os.fsencode(path)).st_mode):
                    links.append(path)
            except OSError:
                pass  # missing now: a file, refused when looked up
        return frozenset(links)

    def _check_trusted_tree(self) -> None:
        """Refuse a trusted path below another one (it would pass through a non-directory)."""
        trusted = self._policy.trusted
        directories: set[str] = set()
        for path in self._trusted_keys:
            head = path.rpartition("/")[0]
            while head and head not in directories:
                directories.add(head)
                head = head.rpartition("/")[0]
        clash = min(directories & trusted.keys(), default=None)
        if clash is not None:
            below = next(p for p in self._trusted_keys if p.startswith(clash + "/"))
            raise ConfigError(f"shield policy: {below} passes through a non-directory entry")

    def _load_trusted(self, node: _Node) -> None:
        """Add the trusted entries directly inside the policy directory ``node`` (those not
        added already, by :meth:`_kid` or as policy entries).

        The trusted paths are kept sorted, so those below ``prefix`` are one contiguous run,
        and a sub-directory's run is skipped with one bisection (``"0"`` follows ``"/"``)."""
        keys = self._trusted_keys
        prefix = os.fsdecode(node.path()).rstrip("/") + "/"
        i = bisect.bisect_left(keys, prefix)
        while i < len(keys) and keys[i].startswith(prefix):
            name, sep, _ = keys[i][len(prefix) :].partition("/")
            if os.fsencode(name) not in node.kids:
                self._trusted_child(node, prefix, os.fsencode(name))
            i = bisect.bisect_left(keys, prefix + name + "0", i + 1) if sep else i + 1

    def _build(self) -> None:
        # The trusted entries are added per directory on first access (_load_trusted): a
        # package lists thousands; a run touches a few dozen.
        self._check_trusted_tree()
        policy = self._policy
        for path in sorted(policy.allowed):
            if (
                path == "/"
                or os.fsencode(posixpath.basename(path))
                in self._ensure_dir(posixpath.dirname(path)).children
            ):
                continue
            try:
                is_dir = stat.S_ISDIR(os.lstat(self._root_b + os.fsencode(path)).st_mode)
            except OSError:
                is_dir = True  # created on first write below it
            if is_dir:
                self._ensure_dir(path)
            else:
                parent = self._ensure_dir(posixpath.dirname(path))
                self._new(_Kind.BACKED, os.fsencode(posixpath.basename(path)), parent)
        for path in policy.tmpfs:
            head, tail = posixpath.split(path)
            parent = self._ensure_dir(head)
            name = os.fsencode(tail)
            old = parent.children.get(name)
            if old is not None and old.kind is _Kind.MEM_DIR:
                continue
            mem = self._mem(stat.S_IFDIR | 0o1777)
            self._new(_Kind.MEM_DIR, name, parent, mem=mem)
        for path, provider in policy.volumes.items():
            head, tail = posixpath.split(path)
            parent = self._ensure_dir(head)
            node = self._new(_Kind.VOLUME, os.fsencode(tail), parent, provider=provider)
            node.volume_root = node
        for path in policy.mountpoints:
            self._ensure_dir(path)
        for path, content in policy.memory_files.items():
            head, tail = posixpath.split(path)
            parent = self._ensure_dir(head)
            mem = self._mem(stat.S_IFREG | 0o400)
            mem.data[:] = content
            self._new(_Kind.MEM_FILE, os.fsencode(tail), parent, mem=mem)
        if policy.allowed:
            for node in list(self._nodes.values()):
                if node.kind is _Kind.DIR:
                    node.allowed = any(is_under(node.display(), a) for a in policy.allowed)

    # -- helpers --------------------------------------------------------------------------

    def _node(self, ino: int) -> _Node:
        node = self._nodes.get(ino)
        if node is None:
            raise _fuse_error(errno.ENOENT)
        return node

    def _backing(self, node: _Node) -> bytes:
        return self._root_b + node.path()

    def _is_backing_dir(self, node: _Node) -> bool:
        return (node.kind is _Kind.DIR and node.allowed) or node.kind is _Kind.BACKED

    def _child(self, parent: _Node, name: bytes) -> _Node:
        if name == b".":
            return parent
        if name == b"..":
            return parent.parent or parent
        cached = self._kid(parent, name)
        if parent.kind is _Kind.DIR:
            if cached is not None and cached.static:
                return cached
            if parent.allowed:
                return self._pass_child(parent, name, cached)
            raise _fuse_error(errno.ENOENT)
        if parent.kind is _Kind.BACKED:
            return self._pass_child(parent, name, cached)
        if parent.kind is _Kind.MEM_DIR:
            if cached is None:
                raise _fuse_error(errno.ENOENT)
            return cached
        if parent.kind is _Kind.VOLUME:
            if parent.provider is None:  # pragma: no cover - set for every volume node
                raise _fuse_error(errno.EIO)
            probe = _Node(0, _Kind.VOLUME, name, parent, volume_root=parent.volume_root)
            parent.provider.getattr(probe.volume_path())
            if cached is not None:
                return cached
            return self._new(
                _Kind.VOLUME,
                name,
                parent,
                static=False,
                provider=parent.provider,
                volume_root=parent.volume_root,
            )
        raise _fuse_error(errno.ENOTDIR)

    def _pass_child(self, parent: _Node, name: bytes, cached: _Node | None) -> _Node:
        try:
            os.lstat(self._backing(parent) + b"/" + name)
        except FileNotFoundError:
            if cached is not None:
                parent.kids.pop(name, None)
            raise _fuse_error(errno.ENOENT) from None
        if cached is not None:
            return cached
        return self._new(_Kind.BACKED, name, parent, static=False)

    def _entry(
        self, ino: int, st: os.stat_result, *, readonly: bool = False
    ) -> fuse.EntryAttributes:
        attr = fuse.EntryAttributes()
        attr.st_ino = ino
        attr.generation = 0
        attr.entry_timeout = _TIMEOUT
        attr.attr_timeout = _TIMEOUT
        attr.st_mode = st.st_mode & ~0o222 if readonly else st.st_mode
        attr.st_nlink = st.st_nlink
        attr.st_uid = st.st_uid
        attr.st_gid = st.st_gid
        attr.st_rdev = st.st_rdev
        attr.st_size = st.st_size
        attr.st_blksize = _BLKSIZE
        attr.st_blocks = st.st_blocks
        attr.st_atime_ns = st.st_atime_ns
        attr.st_mtime_ns = st.st_mtime_ns
        attr.st_ctime_ns = st.st_ctime_ns
        return attr

    def _synthetic(
        self, ino: int, mode: int, size: int, uid: int, gid: int, mtime_ns: int, ctime_ns: int
    ) -> fuse.EntryAttributes:
        attr = fuse.EntryAttributes()
        attr.st_ino = ino
        attr.generation = 0
        attr.entry_timeout = _TIMEOUT
        attr.attr_timeout = _TIMEOUT
        attr.st_mode = mode
        attr.st_nlink = 2 if stat.S_ISDIR(mode) else 1
        attr.st_uid = uid
        attr.st_gid = gid
        attr.st_size = size
        attr.st_blksize = _BLKSIZE
        attr.st_blocks = (size + 511) // 512
        attr.st_atime_ns = mtime_ns
        attr.st_mtime_ns = mtime_ns
        attr.st_ctime_ns = ctime_ns
        return attr

    def _attrs(self, node: _Node) -> fuse.EntryAttributes:
        kind = node.kind
        if kind is _Kind.DIR:
            try:
                st = os.lstat(self._backing(node))
            except OSError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                return self._entry(node.ino, st, readonly=not node.allowed)
            now = time.time_ns()
            mode = stat.S_IFDIR | (0o755 if node.allowed else 0o555)
            return self._synthetic(node.ino, mode, 0, 0, 0, now, now)
        if kind in (_Kind.TRUSTED, _Kind.TRUSTED_LINK):
            try:
                st = os.lstat(self._backing(node))
            except OSError:
                raise _refuse(errno.EACCES, node.display(), "trusted file missing") from None
            want_link = kind is _Kind.TRUSTED_LINK
            if stat.S_ISLNK(st.st_mode) != want_link or not (want_link or stat.S_ISREG(st.st_mode)):
                raise _refuse(errno.EACCES, node.display(), "trusted entry changed type")
            return self._entry(node.ino, st, readonly=True)
        if kind is _Kind.BACKED:
            return self._entry(node.ino, os.lstat(self._backing(node)))
        if node.mem is not None:
            m = node.mem
            size = len(m.target) if kind is _Kind.MEM_LINK else len(m.data)
            return self._synthetic(node.ino, m.mode, size, m.uid, m.gid, m.mtime_ns, m.ctime_ns)
        if kind is _Kind.VOLUME and node.provider is not None:
            vs = node.provider.getattr(node.volume_path())
            mode = (stat.S_IFDIR if vs.is_dir else stat.S_IFREG) | stat.S_IMODE(vs.mode)
            uid, gid = self._policy.owner
            return self._synthetic(node.ino, mode, vs.size, uid, gid, vs.mtime_ns, vs.mtime_ns)
        raise _fuse_error(errno.EIO)  # pragma: no cover - every kind is handled above

    def _writable_dir(self, parent: _Node, name: bytes) -> None:
        """Refuse to create or remove ``name`` in ``parent`` unless the policy allows it."""
        existing = self._kid(parent, name)
        if (
            existing is not None
            and existing.static
            and existing.kind
            in (
                _Kind.TRUSTED,
                _Kind.TRUSTED_LINK,
            )
        ):
            raise _refuse(errno.EROFS, existing.display(), "trusted files are read-only")
        if parent.kind is _Kind.DIR and not parent.allowed:
            if existing is not None and existing.kind is _Kind.MEM_FILE:
                return
            raise _fuse_error(errno.EACCES)
        if parent.kind not in (_Kind.DIR, _Kind.BACKED, _Kind.MEM_DIR, _Kind.VOLUME):
            raise _fuse_error(errno.ENOTDIR)

    def _fh(self, handle: _Handle) -> int:
        fh = next(self._fhs)
        self._handles[fh] = handle
        return fh

    def _handle(self, fh: int) -> _Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise _fuse_error(errno.EBADF)
        return handle

    @staticmethod
    def _chown(path: bytes, ctx: fuse.RequestContext) -> None:
        if os.geteuid() == 0:
            os.lchown(path, ctx.uid, ctx.gid)

    # -- metadata -------------------------------------------------------------------------

    @_boundary
    def lookup(
        self, parent_inode: int, name: bytes, ctx: fuse.RequestContext
    ) -> fuse.EntryAttributes:
        try:
            return self._attrs(self._child(self._node(parent_inode), name))
        except fuse.FUSEError as exc:
            if exc.errno != errno.ENOENT:
                raise
        # A negative entry the kernel may cache for the same short timeout (st_ino 0): programs
        # probe many missing paths at start-up (Python's sys.path search).
        negative = fuse.EntryAttributes()
        negative.st_ino = 0
        negative.entry_timeout = _TIMEOUT
        return negative

    def forget(self, inode_list: object) -> None:
        # Nodes are kept for the life of the mount: their number is bounded by the paths the
        # application touched, and keeping them keeps inode numbers stable.
        return None

    @_boundary
    def getattr(self, inode: int, ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        return self._attrs(self._node(inode))

    @_boundary
    def setattr(
        self,
        inode: int,
        attr: fuse.EntryAttributes,
        fields: fuse.SetattrFields,
        fh: int | None,
        ctx: fuse.RequestContext,
    ) -> fuse.EntryAttributes:
        node = self._node(inode)
        kind = node.kind
        if kind in (_Kind.TRUSTED, _Kind.TRUSTED_LINK):
            raise _refuse(errno.EROFS, node.display(), "trusted files are read-only")
        if kind is _Kind.DIR and not node.allowed:
            raise _fuse_error(errno.EACCES)
        if kind in (_Kind.DIR, _Kind.BACKED):
            path = self._backing(node)
            handle = self._handles.get(fh) if fh is not None else None
            if fields.update_size:
                if isinstance(handle, _FdHandle):
                    os.ftruncate(handle.fd, attr.st_size)
                else:
                    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    try:
                        os.ftruncate(fd, attr.st_size)
                    finally:
                        os.close(fd)
            if fields.update_mode and not stat.S_ISLNK(os.lstat(path).st_mode):
                os.chmod(path, stat.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                uid = attr.st_uid if fields.update_uid else -1
                gid = attr.st_gid if fields.update_gid else -1
                os.lchown(path, uid, gid)
            if fields.update_atime or fields.update_mtime:
                st = os.lstat(path)
                atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
                mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
                os.utime(path, ns=(atime, mtime), follow_symlinks=False)
        elif node.mem is not None:
            m = node.mem
            if fields.update_size:
                if kind is not _Kind.MEM_FILE:
                    raise _fuse_error(errno.EINVAL)
                if attr.st_size < len(m.data):
                    del m.data[attr.st_size :]
                else:
                    m.data.extend(bytes(attr.st_size - len(m.data)))
            if fields.update_mode:
                m.mode = stat.S_IFMT(m.mode) | stat.S_IMODE(attr.st_mode)
            if fields.update_uid:
                m.uid = attr.st_uid
            if fields.update_gid:
                m.gid = attr.st_gid
            if fields.update_mtime:
                m.mtime_ns = attr.st_mtime_ns
            m.ctime_ns = time.time_ns()
        elif kind is _Kind.VOLUME and node.provider is not None and fields.update_size:
            node.provider.truncate(node.volume_path(), attr.st_size)
        return self._attrs(node)

    @_boundary
    def readlink(self, inode: int, ctx: fuse.RequestContext) -> bytes:
        node = self._node(inode)
        if node.kind is _Kind.TRUSTED_LINK:
            try:
                target = os.readlink(self._backing(node))
            except OSError:
                raise _refuse(errno.EACCES, node.display(), "trusted link missing") from None
            if symlink_target_digest(target) != node.expected:
                raise _refuse(errno.EACCES, node.display(), "link target does not match its hash")
            return target
        if node.kind is _Kind.BACKED:
            return os.readlink(self._backing(node))
        if node.kind is _Kind.MEM_LINK and node.mem is not None:
            return node.mem.target
        raise _fuse_error(errno.EINVAL)

    @_boundary
    def access(self, inode: int, mode: int, ctx: fuse.RequestContext) -> bool:
        node = self._node(inode)
        if mode & os.W_OK:
            if node.kind in (_Kind.TRUSTED, _Kind.TRUSTED_LINK):
                return False
            if node.kind is _Kind.DIR and not node.allowed:
                return False
        self._attrs(node)
        return True

    @_boundary
    def statfs(self, ctx: fuse.RequestContext) -> fuse.StatvfsData:
        st = os.statvfs(self._root_b)
        data = fuse.StatvfsData()
        data.f_bsize = st.f_bsize
        data.f_frsize = st.f_frsize
        data.f_blocks = st.f_blocks
        data.f_bfree = st.f_bfree
        data.f_bavail = st.f_bavail
        data.f_files = st.f_files
        data.f_ffree = st.f_ffree
        data.f_favail = st.f_favail
        data.f_namemax = st.f_namemax
        return data

    def getxattr(self, inode: int, name: bytes, ctx: fuse.RequestContext) -> bytes:
        raise _fuse_error(fuse.ENOATTR)

    def listxattr(self, inode: int, ctx: fuse.RequestContext) -> list[bytes]:
        return []

    # -- namespace changes ----------------------------------------------------------------

    @_boundary
    def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: fuse.RequestContext
    ) -> fuse.EntryAttributes:
        parent = self._node(parent_inode)
        self._writable_dir(parent, name)
        if name in parent.children and parent.children[name].static:
            raise _fuse_error(errno.EEXIST)
        if self._is_backing_dir(parent):
            path = self._backing(parent) + b"/" + name
            os.mkdir(path, stat.S_IMODE(mode) & ~ctx.umask)
            self._chown(path, ctx)
            return self._attrs(self._pass_child(parent, name, parent.children.get(name)))
        if parent.kind is _Kind.MEM_DIR:
            if name in parent.children:
                raise _fuse_error(errno.EEXIST)
            mem = _Mem(
                mode=stat.S_IFDIR | (stat.S_IMODE(mode) & ~ctx.umask), uid=ctx.uid, gid=ctx.gid
            )
            return self._attrs(self._new(_Kind.MEM_DIR, name, parent, mem=mem))
        if parent.kind is _Kind.VOLUME and parent.provider is not None:
            child = _Node(0, _Kind.VOLUME, name, parent, volume_root=parent.volume_root)
            parent.provider.mkdir(child.volume_path(), stat.S_IMODE(mode) & ~ctx.umask)
            return self._attrs(self._child(parent, name))
        raise _fuse_error(errno.EACCES)

    @_boundary
    def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: fuse.RequestContext
    ) -> fuse.EntryAttributes:
        parent = self._node(parent_inode)
        self._writable_dir(parent, name)
        if name in parent.children and parent.children[name].static:
            raise _fuse_error(errno.EEXIST)
        if self._is_backing_dir(parent):
            path = self._backing(parent) + b"/" + name
            os.symlink(target, path)
            self._chown(path, ctx)
            return self._attrs(self._pass_child(parent, name, parent.children.get(name)))
        if parent.kind is _Kind.MEM_DIR:
            if name in parent.children:
                raise _fuse_error(errno.EEXIST)
            mem = _Mem(mode=stat.S_IFLNK | 0o777, uid=ctx.uid, gid=ctx.gid, target=target)
            return self._attrs(self._new(_Kind.MEM_LINK, name, parent, mem=mem))
        raise _fuse_error(errno.EPERM)

    def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: fuse.RequestContext
    ) -> fuse.EntryAttributes:
        # Hard links would give a trusted file a second, unchecked name.
        raise _fuse_error(errno.EPERM)

    def _remove(self, parent_inode: int, name: bytes, directory: bool) -> None:
        parent = self._node(parent_inode)
        self._writable_dir(parent, name)
        child = parent.children.get(name)
        if child is not None and child.static and child.kind is not _Kind.MEM_FILE:
            raise _fuse_error(errno.EBUSY)
        if child is not None and child.kind is _Kind.MEM_FILE and parent.kind is not _Kind.MEM_DIR:
            if directory:
                raise _fuse_error(errno.ENOTDIR)
            del parent.children[name]
            return
        if self._is_backing_dir(parent):
            path = self._backing(parent) + b"/" + name
            os.rmdir(path) if directory else os.unlink(path)
        elif parent.kind is _Kind.MEM_DIR:
            if child is None:
                raise _fuse_error(errno.ENOENT)
            if directory != (child.kind is _Kind.MEM_DIR):
                raise _fuse_error(errno.ENOTDIR if directory else errno.EISDIR)
            if directory and child.children:
                raise _fuse_error(errno.ENOTEMPTY)
        elif parent.kind is _Kind.VOLUME and parent.provider is not None:
            probe = _Node(0, _Kind.VOLUME, name, parent, volume_root=parent.volume_root)
            if directory:
                parent.provider.rmdir(probe.volume_path())
            else:
                parent.provider.unlink(probe.volume_path())
        else:
            raise _fuse_error(errno.EACCES)
        parent.children.pop(name, None)

    @_boundary
    def unlink(self, parent_inode: int, name: bytes, ctx: fuse.RequestContext) -> None:
        self._remove(parent_inode, name, directory=False)

    @_boundary
    def rmdir(self, parent_inode: int, name: bytes, ctx: fuse.RequestContext) -> None:
        self._remove(parent_inode, name, directory=True)

    def _domain(self, node: _Node) -> object:
        if self._is_backing_dir(node):
            return "backing"
        if node.kind is _Kind.MEM_DIR:
            return "memory"
        if node.kind is _Kind.VOLUME:
            return node.volume_root
        return None

    @_boundary
    def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: fuse.RequestContext,
    ) -> None:
        old_parent, new_parent = self._node(parent_inode_old), self._node(parent_inode_new)
        self._writable_dir(old_parent, name_old)
        self._writable_dir(new_parent, name_new)
        moving = self._child(old_parent, name_old)
        if moving.static and moving.kind not in (_Kind.MEM_DIR, _Kind.MEM_FILE, _Kind.MEM_LINK):
            raise _fuse_error(errno.EBUSY)
        target = new_parent.children.get(name_new)
        if target is not None and target.static and target.kind is not _Kind.MEM_FILE:
            raise _fuse_error(errno.EBUSY)
        domain = self._domain(old_parent)
        if domain is None or domain != self._domain(new_parent):
            raise _fuse_error(errno.EXDEV)
        if flags & fuse.RENAME_EXCHANGE:
            raise _fuse_error(errno.EINVAL)
        noreplace = bool(flags & fuse.RENAME_NOREPLACE)
        if domain == "backing":
            new_path = self._backing(new_parent) + b"/" + name_new
            if noreplace and os.path.lexists(new_path):
                raise _fuse_error(errno.EEXIST)
            os.rename(self._backing(old_parent) + b"/" + name_old, new_path)
        elif domain == "memory":
            if target is not None:
                if noreplace:
                    raise _fuse_error(errno.EEXIST)
                if target.kind is _Kind.MEM_DIR and target.children:
                    raise _fuse_error(errno.ENOTEMPTY)
        else:
            provider = old_parent.provider
            if provider is None:  # pragma: no cover - set for every volume node
                raise _fuse_error(errno.EIO)
            dest = _Node(0, _Kind.VOLUME, name_new, new_parent, volume_root=new_parent.volume_root)
            if noreplace and target is not None:
                raise _fuse_error(errno.EEXIST)
            provider.rename(moving.volume_path(), dest.volume_path())
        old_parent.children.pop(name_old, None)
        new_parent.children.pop(name_new, None)
        moving.parent, moving.name = new_parent, name_new
        new_parent.children[name_new] = moving

    # -- files ----------------------------------------------------------------------------

    def _open_trusted(self, node: _Node) -> fuse.FileInfo:
        path = node.display()
        try:
            fd = os.open(
                self._backing(node), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            )
        except OSError:
            raise _refuse(errno.EACCES, path, "trusted file cannot be opened") from None
        try:
            held = sum(
                h.reader.held_bytes for h in self._handles.values() if isinstance(h, _TrustedHandle)
            )
            verify = functools.partial(
                self._verified.verify_keeping,
                fd,
                node.expected,
                path=path,
                keep_limit=min(_KEEP_PER_FILE, _KEEP_TOTAL - held),
            )
            if os.fstat(fd).st_size <= _INLINE_VERIFY:
                content, chunks = verify()  # small: cheaper than the thread hop
            else:
                # Let other requests go on meanwhile (hashlib releases the GIL).
                self._lock.release()
                try:
                    content, chunks = verify()
                finally:
                    self._lock.acquire()
        except TrustedFileModifiedError as exc:
            os.close(fd)
            raise _refuse(errno.EACCES, path, str(exc)) from None
        except BaseException:
            os.close(fd)
            raise
        reader = TrustedReader(fd, content, path=path, verified_chunks=chunks)
        fh = self._fh(_TrustedHandle(reader))
        return fuse.FileInfo(fh=fh, keep_cache=True)

    @_boundary
    def open(self, inode: int, flags: int, ctx: fuse.RequestContext) -> fuse.FileInfo:
        node = self._node(inode)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        kind = node.kind
        if kind is _Kind.TRUSTED:
            if writing:
                raise _refuse(errno.EROFS, node.display(), "trusted files are read-only")
            return self._open_trusted(node)
        if kind is _Kind.BACKED:
            fd = os.open(
                self._backing(node),
                (flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY)) | os.O_NOFOLLOW | os.O_CLOEXEC,
            )
            return fuse.FileInfo(fh=self._fh(_FdHandle(fd)))
        if kind is _Kind.MEM_FILE and node.mem is not None:
            if flags & os.O_TRUNC and writing:
                del node.mem.data[:]
            return fuse.FileInfo(fh=self._fh(_MemHandle(node)))
        if kind is _Kind.VOLUME and node.provider is not None:
            handle = node.provider.open(node.volume_path(), flags, 0o600)
            return fuse.FileInfo(fh=self._fh(_VolumeHandle(node.provider, handle)))
        if kind in (_Kind.DIR, _Kind.MEM_DIR):
            raise _fuse_error(errno.EISDIR)
        raise _fuse_error(errno.EACCES)

    @_boundary
    def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: fuse.RequestContext
    ) -> tuple[fuse.FileInfo, fuse.EntryAttributes]:
        parent = self._node(parent_inode)
        self._writable_dir(parent, name)
        existing = parent.children.get(name)
        if existing is not None and existing.static:
            if flags & os.O_EXCL:
                raise _fuse_error(errno.EEXIST)
            info = self.open(existing.ino, flags & ~os.O_CREAT, ctx)
            return info, self._attrs(existing)
        perm = stat.S_IMODE(mode) & ~ctx.umask
        if self._is_backing_dir(parent):
            path = self._backing(parent) + b"/" + name
            fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, perm)
            if os.geteuid() == 0:
                os.fchown(fd, ctx.uid, ctx.gid)
            node = self._pass_child(parent, name, existing)
            return fuse.FileInfo(fh=self._fh(_FdHandle(fd))), self._attrs(node)
        if parent.kind is _Kind.MEM_DIR:
            if existing is not None:
                if flags & os.O_EXCL:
                    raise _fuse_error(errno.EEXIST)
                info = self.open(existing.ino, flags & ~os.O_CREAT, ctx)
                return info, self._attrs(existing)
            mem = _Mem(mode=stat.S_IFREG | perm, uid=ctx.uid, gid=ctx.gid)
            node = self._new(_Kind.MEM_FILE, name, parent, static=False, mem=mem)
            return fuse.FileInfo(fh=self._fh(_MemHandle(node))), self._attrs(node)
        if parent.kind is _Kind.VOLUME and parent.provider is not None:
            probe = _Node(0, _Kind.VOLUME, name, parent, volume_root=parent.volume_root)
            handle = parent.provider.open(probe.volume_path(), flags | os.O_CREAT, perm)
            node = self._child(parent, name)
            info = fuse.FileInfo(fh=self._fh(_VolumeHandle(parent.provider, handle)))
            return info, self._attrs(node)
        raise _fuse_error(errno.EACCES)

    @_boundary
    def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self._handle(fh)
        if isinstance(handle, _TrustedHandle):
            return handle.reader.read(off, size)
        if isinstance(handle, _FdHandle):
            return os.pread(handle.fd, size, off)
        if isinstance(handle, _MemHandle):
            data = handle.node.mem.data if handle.node.mem is not None else bytearray()
            return bytes(data[off : off + size])
        return handle.provider.read(handle.handle, off, size)

    @_boundary
    def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handle(fh)
        if isinstance(handle, _TrustedHandle):
            raise _fuse_error(errno.EBADF)
        if isinstance(handle, _FdHandle):
            return os.pwrite(handle.fd, buf, off)
        if isinstance(handle, _MemHandle):
            mem = handle.node.mem
            if mem is None:  # pragma: no cover - set for every memory node
                raise _fuse_error(errno.EIO)
            if off > len(mem.data):
                mem.data.extend(bytes(off - len(mem.data)))
            mem.data[off : off + len(buf)] = buf
            mem.mtime_ns = mem.ctime_ns = time.time_ns()
            return len(buf)
        return handle.provider.write(handle.handle, off, buf)

    @_boundary
    def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handle(fh)
        if isinstance(handle, _FdHandle):
            (os.fdatasync if datasync else os.fsync)(handle.fd)
        elif isinstance(handle, _VolumeHandle):
            handle.provider.fsync(handle.handle)

    @_boundary
    def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if isinstance(handle, _TrustedHandle):
            handle.reader.close()
        elif isinstance(handle, _FdHandle):
            os.close(handle.fd)
        elif isinstance(handle, _VolumeHandle):
            handle.provider.release(handle.handle)

    # -- directories ----------------------------------------------------------------------

    def _names(self, node: _Node) -> list[bytes]:
        names: list[bytes] = []
        if node.kind is _Kind.DIR:
            names = [n for n, c in node.children.items() if c.static]
            if node.allowed:
                try:
                    names += [n for n in os.listdir(self._backing(node)) if n not in names]
                except (FileNotFoundError, NotADirectoryError):
                    pass
        elif node.kind is _Kind.BACKED:
            names = os.listdir(self._backing(node))
        elif node.kind is _Kind.MEM_DIR:
            names = list(node.children)
        elif node.kind is _Kind.VOLUME and node.provider is not None:
            names = [os.fsencode(n) for n in node.provider.readdir(node.volume_path())]
        else:
            raise _fuse_error(errno.ENOTDIR)
        return sorted(names)

    _LISTED_TYPES: ClassVar[dict[_Kind, int]] = {
        _Kind.DIR: stat.S_IFDIR,
        _Kind.MEM_DIR: stat.S_IFDIR,
        _Kind.TRUSTED: stat.S_IFREG,
        _Kind.MEM_FILE: stat.S_IFREG,
        _Kind.TRUSTED_LINK: stat.S_IFLNK,
        _Kind.MEM_LINK: stat.S_IFLNK,
    }

    def _listed(self, node: _Node) -> fuse.EntryAttributes:
        """What a directory listing needs of an entry: its inode number and type. A policy
        entry's type is the policy's (a trusted path that is missing or changed on the backing
        tree is listed, and refused when it is looked up); backing and volume entries are
        asked."""
        kind_type = self._LISTED_TYPES.get(node.kind)
        if kind_type is None:
            return self._attrs(node)
        return fuse.EntryAttributes(st_ino=node.ino, st_mode=kind_type)

    @_boundary
    def opendir(self, inode: int, ctx: fuse.RequestContext) -> int:
        node = self._node(inode)
        entries: list[tuple[bytes, fuse.EntryAttributes]] = []
        for name in self._names(node):
            try:
                entries.append((name, self._listed(self._child(node, name))))
            except fuse.FUSEError:
                continue  # vanished: not listed
        fh = next(self._fhs)
        self._dirs[fh] = entries
        return fh

    @_boundary
    def readdir(self, fh: int, start_id: int) -> Iterator[tuple[bytes, fuse.EntryAttributes, int]]:
        entries = self._dirs.get(fh, [])
        for index in range(start_id, len(entries)):
            name, attrs = entries[index]
            yield name, attrs, index + 1

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    def preverify(self, paths: tuple[str, ...], stop: threading.Event) -> None:
        """Hash the trusted regular files ``paths`` ahead of their first open (runs on its own
        thread, without the request lock: hashing releases the GIL). A file that fails is left
        for its open to refuse and log as usual."""
        kept = 0
        for path in paths:
            if stop.is_set():
                return
            expected = self._policy.trusted.get(path)
            if expected is None or path in self._trusted_links:
                continue
            try:
                fd = os.open(
                    self._root_b + os.fsencode(path),
                    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                )
            except OSError:
                continue
            try:
                # Held for the first open; together with what open handles hold, within the
                # same bounds as chunks kept by an open's own verification.
                room = min(_KEEP_PER_FILE, _KEEP_TOTAL - kept)
                size = os.fstat(fd).st_size
                self._verified.prefetch(fd, expected, path=path, keep_limit=room)
                kept += size if size <= room else 0
            except (TrustedFileModifiedError, OSError):
                pass
            finally:
                os.close(fd)

    def close_all(self) -> None:
        """Close every descriptor still open (the session is over)."""
        for fh in list(self._handles):
            handle = self._handles.pop(fh)
            try:
                if isinstance(handle, _TrustedHandle):
                    handle.reader.close()
                elif isinstance(handle, _FdHandle):
                    os.close(handle.fd)
                elif isinstance(handle, _VolumeHandle):
                    handle.provider.release(handle.handle)
            except Exception:
                _logger.debug("shield: closing handle %d failed", fh, exc_info=True)


# -- mounting --------------------------------------------------------------------------------

_PROCESS_LOCK = threading.Lock()
_ACTIVE: list[Shield] = []


@atexit.register
def _unmount_at_exit() -> None:
    # A shield still mounted when the interpreter exits is unmounted (and its own mountpoint
    # removed) here; after SIGKILL, fusermount3's auto_unmount removes the mount instead.
    for shield in list(_ACTIVE):
        shield.unmount()


def is_mounted(path: Path | str) -> bool:
    """Whether ``path`` is a mount point in this mount namespace (from /proc/self/mountinfo)."""
    wanted = os.fsencode(os.path.realpath(path))
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split(b" ")
        # mountinfo escapes space, tab, newline and backslash in paths as \ooo (octal).
        if len(fields) > 4 and _OCTAL_ESCAPE.sub(_unescape, fields[4]) == wanted:
            return True
    return False


_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _unescape(match: re.Match[bytes]) -> bytes:
    return bytes([int(match.group(1), 8)])


def _lazy_unmount(mountpoint: str) -> None:
    for argv in (["fusermount3", "-u", "-z", "-q", mountpoint], ["umount", "-l", mountpoint]):
        if shutil.which(argv[0]) is None:
            continue
        subprocess.run(argv, check=False, capture_output=True, timeout=10)
        if not is_mounted(mountpoint):
            return


class Shield:
    """A shield filesystem for one policy; mount it with :meth:`mount` or ``with Shield(...)``.

    >>> with Shield(policy) as shield:           # doctest: +SKIP
    ...     Sandbox(root=shield.mountpoint, argv=["/bin/true"]).run()
    """

    def __init__(self, policy: ShieldPolicy) -> None:
        self._policy = policy
        self._ops: _ShieldOperations | None = None
        self._session: fuse.FUSESession | None = None
        self._mountpoint: Path | None = None
        self._own_dir: Path | None = None
        self._stop_preverify = threading.Event()

    def __repr__(self) -> str:
        return f"Shield(backing_root={str(self._policy.backing_root)!r}, mountpoint={self._mountpoint!r})"

    @property
    def policy(self) -> ShieldPolicy:
        """The policy this shield enforces."""
        return self._policy

    @property
    def mountpoint(self) -> Path:
        """Where the shield is mounted.

        Raises:
            ConfigError: it is not mounted.
        """
        if self._mountpoint is None:
            raise ConfigError("the shield is not mounted")
        return self._mountpoint

    def mount(self, mountpoint: Path | str | None = None) -> Shield:
        """Mount the shield at ``mountpoint`` (an empty directory; a private temporary one if None).

        Returns self, so ``with Shield(p).mount(dir) as s:`` works.

        Raises:
            ConfigError: this shield is already mounted, or the policy's tree is inconsistent
                with itself.
            EnvironmentUnavailableError: /dev/fuse, fusermount3 or the mount itself is
                unavailable.
        """
        if not os.path.exists("/dev/fuse"):
            raise EnvironmentUnavailableError("/dev/fuse is missing: the shield needs FUSE")
        with _PROCESS_LOCK:
            if self in _ACTIVE:
                raise ConfigError("this shield is already mounted")
            _ACTIVE.append(self)
        try:
            self._start(mountpoint)
        except BaseException:
            with _PROCESS_LOCK:
                _ACTIVE.remove(self)
            self._remove_own_dir()
            raise
        return self

    def _start(self, mountpoint: Path | str | None) -> None:
        if mountpoint is None:
            base = os.environ.get("XDG_RUNTIME_DIR") if os.geteuid() != 0 else None
            self._own_dir = Path(tempfile.mkdtemp(prefix="sealpod-shield-", dir=base))
            target = self._own_dir
        else:
            target = Path(mountpoint)
            if not target.is_dir():
                raise EnvironmentUnavailableError(
                    f"cannot mount the shield at {target}: not a directory"
                )
        lock = threading.Lock()
        self._ops = _ShieldOperations(self._policy, lock)
        if self._policy.preverify:
            # On the spare core while the mount and the sandbox are being set up.
            threading.Thread(
                target=self._ops.preverify,
                args=(self._policy.preverify, self._stop_preverify),
                name="sealpod-preverify",
                daemon=True,
            ).start()
        options = ("fsname=sealpod-shield", "subtype=sealpod", "allow_other", "auto_unmount",
                   "noatime")  # fmt: skip
        session = fuse.FUSESession(self._ops, str(target), options, lock=lock)
        session.start()
        self._session = session
        self._mountpoint = target
        self._raise_readahead(target)
        _logger.debug("shield mounted at %s over %s", target, self._policy.backing_root)

    @staticmethod
    def _raise_readahead(mountpoint: Path) -> None:
        try:
            dev = os.stat(mountpoint).st_dev
            bdi = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
            bdi.write_text(str(_READAHEAD_KB))
        except OSError:
            _logger.debug("shield: could not raise readahead (not root?)", exc_info=True)

    def unmount(self) -> None:
        """Stop the FUSE session and remove the mount; safe to call more than once.

        Always leaves the mount point unmounted (falls back to a lazy unmount) and removes the
        mount point directory if the shield created it.
        """
        session, mountpoint = self._session, self._mountpoint
        self._stop_preverify.set()
        try:
            if session is not None:
                session.close()
            if self._ops is not None:
                self._ops.close_all()
            if mountpoint is not None and is_mounted(mountpoint):
                _lazy_unmount(str(mountpoint))
        finally:
            self._session = None
            self._mountpoint = None
            self._remove_own_dir()
            with _PROCESS_LOCK:
                if self in _ACTIVE:
                    _ACTIVE.remove(self)

    def _remove_own_dir(self) -> None:
        if self._own_dir is not None:
            try:
                self._own_dir.rmdir()
            except OSError:
                _logger.warning("shield: could not remove %s", self._own_dir)
            self._own_dir = None

    def __enter__(self) -> Shield:
        if self._mountpoint is None:
            self.mount()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unmount()


def run_shielded(policy: ShieldPolicy, sandbox: Sandbox) -> int:
    """Mount a shield for ``policy``, run ``sandbox`` with it as root, and always clean up.

    The shield is mounted on a private temporary directory, which is unmounted and removed on
    every exit path: normal exit, any exit code, the application killed by a signal (even
    SIGKILL), or an exception here.

    Raises:
        ConfigError: as :class:`Shield` and :class:`Sandbox`.
        EnvironmentUnavailableError: FUSE or bubblewrap is unavailable.
    """
    with Shield(policy) as shield:
        return dataclasses.replace(sandbox, root=shield.mountpoint).run()
