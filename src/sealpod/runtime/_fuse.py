"""A small FUSE server: the kernel's ``/dev/fuse`` protocol, spoken directly from Python.

The shield used to run on pyfuse3 (libfuse3 plus the trio event loop). Importing those two costs
about 250 ms, more than the whole start-up budget of ``sealpod run``; the protocol itself is a
fixed set of little-endian structures (``<linux/fuse.h>``), so this module speaks it with
:mod:`struct` and needs nothing beyond the standard library and the ``fusermount3`` helper.

What it does:

* **Mount** through ``fusermount3`` (set-uid, as libfuse does for every caller that asks for
  ``auto_unmount``): the helper mounts, passes the ``/dev/fuse`` descriptor back over a UNIX
  socket (``_FUSE_COMMFD``, ``SCM_RIGHTS``), and then waits on that socket. When this process
  dies, even by SIGKILL, the helper detaches the mount.
* **Serve** requests on a few threads that each read one request into their own buffer, call
  the handler of the operations object under one lock (given to the session by its owner, who
  may release it around slow work), and write the reply with ``writev`` (no copy of read data).
* **Unmount** by detaching the mount (``umount2(MNT_DETACH)`` as root, ``fusermount3 -u -z``
  otherwise) and closing the socket, then wait for the threads, which stop when the kernel ends
  the connection (``ENODEV``); the connection is aborted through ``/sys/fs/fuse/connections`` if
  they do not. (The helper's ``auto_unmount`` acts only when the connection is dead, that is when
  this process is gone.)

The operations object has synchronous methods named and shaped like pyfuse3's (``lookup``,
``getattr``, ``open``, ``read``...); a missing method answers ``ENOSYS``. Handlers raise
:class:`FUSEError` for an errno; anything else escaping a handler is logged and answered ``EIO``
(the session goes on). Only the opcodes below are served; others get ``ENOSYS``, which the kernel
turns into "not supported" for the rest of the mount.

Protocol version: the reply announces minor version ``min(kernel, 38)``; the structures used all
have their current sizes since 7.23.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from sealpod.errors import EnvironmentUnavailableError

__all__ = [
    "ENOATTR",
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "ROOT_INODE",
    "EntryAttributes",
    "FUSEError",
    "FUSESession",
    "FileInfo",
    "RequestContext",
    "SetattrFields",
    "StatvfsData",
]

_logger = logging.getLogger(__name__)

ROOT_INODE = 1
ENOATTR = errno.ENODATA
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

# <linux/fuse.h> opcodes.
_LOOKUP, _FORGET, _GETATTR, _SETATTR, _READLINK, _SYMLINK = 1, 2, 3, 4, 5, 6
_MKNOD, _MKDIR, _UNLINK, _RMDIR, _RENAME, _LINK, _OPEN, _READ, _WRITE = (
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    16,
)
_STATFS, _RELEASE, _FSYNC, _SETXATTR, _GETXATTR, _LISTXATTR = 17, 18, 20, 21, 22, 23
_REMOVEXATTR, _FLUSH, _INIT, _OPENDIR, _READDIR, _RELEASEDIR, _FSYNCDIR = 24, 25, 26, 27, 28, 29, 30
_ACCESS, _CREATE, _INTERRUPT, _DESTROY, _IOCTL, _BATCH_FORGET, _RENAME2 = 34, 35, 36, 38, 39, 42, 45

# fuse_init_out.flags this server asks for (each only if the kernel offers it).
_ASYNC_READ = 1 << 0
_ATOMIC_O_TRUNC = 1 << 3
_BIG_WRITES = 1 << 5
_AUTO_INVAL_DATA = 1 << 12
_ASYNC_DIO = 1 << 15
_PARALLEL_DIROPS = 1 << 18
_MAX_PAGES = 1 << 22
_WANTED_FLAGS = (
    _ASYNC_READ
    | _ATOMIC_O_TRUNC
    | _BIG_WRITES
    | _AUTO_INVAL_DATA
    | _ASYNC_DIO
    | _PARALLEL_DIROPS
    | _MAX_PAGES
)

_FOPEN_DIRECT_IO = 1 << 0
_FOPEN_KEEP_CACHE = 1 << 1

# fuse_setattr_in.valid
_FATTR_MODE, _FATTR_UID, _FATTR_GID, _FATTR_SIZE = 1, 2, 4, 8
_FATTR_ATIME, _FATTR_MTIME, _FATTR_FH, _FATTR_ATIME_NOW, _FATTR_MTIME_NOW = 16, 32, 64, 128, 256
_FATTR_CTIME = 1 << 10

_MAX_WRITE = 1 << 20
#: How long the first serving thread polls for the next request after answering one.
_SPIN_SECONDS = float(os.environ.get("SEALPOD_FUSE_SPIN_US", "300")) / 1e6
_MAX_PAGES_COUNT = 256
#: A request is at most one header, one write_in and max_write bytes of data.
_BUFFER_SIZE = _MAX_WRITE + 4096

_IN_HEADER = struct.Struct("<IIQQIIIHH")  # fuse_in_header, 40 bytes
_OUT_HEADER = struct.Struct("<IiQ")  # fuse_out_header, 16 bytes
_ATTR = "QQQQQQIIIIIIIIII"  # fuse_attr, 88 bytes
_ENTRY_OUT = struct.Struct("<QQQQII" + _ATTR)  # fuse_entry_out, 128 bytes
_ATTR_OUT = struct.Struct("<QII" + _ATTR)  # fuse_attr_out, 104 bytes
_OPEN_OUT = struct.Struct("<QII")  # fuse_open_out
_INIT_IN = struct.Struct("<IIII")  # major, minor, max_readahead, flags (flags2 follow)
_INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")  # fuse_init_out, 64 bytes
_SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")  # fuse_setattr_in, 88 bytes
_OPEN_IN = struct.Struct("<II")
_CREATE_IN = struct.Struct("<IIII")
_MKDIR_IN = struct.Struct("<II")
_READ_IN = struct.Struct("<QQII")  # fh, offset, size, read_flags (lock_owner, flags follow)
_WRITE_IN_SIZE = 40
_RELEASE_IN = struct.Struct("<Q")
_FSYNC_IN = struct.Struct("<QI")
_ACCESS_IN = struct.Struct("<I")
_RENAME_IN = struct.Struct("<Q")
_RENAME2_IN = struct.Struct("<QII")
_LINK_IN = struct.Struct("<Q")
_GETXATTR_IN = struct.Struct("<II")
_U32_PAIR = struct.Struct("<II")  # fuse_write_out, fuse_getxattr_out
_KSTATFS = struct.Struct("<QQQQQIIII6I")  # fuse_kstatfs, 80 bytes
_DIRENT = struct.Struct("<QQII")  # fuse_dirent without its name


class FUSEError(Exception):
    """Raised by a handler: the request fails with this errno."""

    def __init__(self, code: int) -> None:
        super().__init__(os.strerror(code))
        self.errno = code


class EntryAttributes:
    """An inode's attributes and how long the kernel may cache them (``st_ino`` 0: negative).

    A plain class rather than a dataclass: building one costs a millisecond of start-up.
    """

    __slots__ = (
        "attr_timeout", "entry_timeout", "generation", "st_atime_ns", "st_blksize",
        "st_blocks", "st_ctime_ns", "st_gid", "st_ino", "st_mode", "st_mtime_ns", "st_nlink",
        "st_rdev", "st_size", "st_uid",
    )  # fmt: skip

    def __init__(
        self,
        st_ino: int = 0,
        generation: int = 0,
        entry_timeout: float = 0.0,
        attr_timeout: float = 0.0,
        st_mode: int = 0,
        st_nlink: int = 0,
        st_uid: int = 0,
        st_gid: int = 0,
        st_rdev: int = 0,
        st_size: int = 0,
        st_blksize: int = 0,
        st_blocks: int = 0,
        st_atime_ns: int = 0,
        st_mtime_ns: int = 0,
        st_ctime_ns: int = 0,
    ) -> None:
        self.st_ino = st_ino
        self.generation = generation
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.st_mode = st_mode
        self.st_nlink = st_nlink
        self.st_uid = st_uid
        self.st_gid = st_gid
        self.st_rdev = st_rdev
        self.st_size = st_size
        self.st_blksize = st_blksize
        self.st_blocks = st_blocks
        self.st_atime_ns = st_atime_ns
        self.st_mtime_ns = st_mtime_ns
        self.st_ctime_ns = st_ctime_ns


class FileInfo(NamedTuple):
    """The answer to an open: the handle number and the kernel caching flags."""

    fh: int
    keep_cache: bool = False
    direct_io: bool = False


class RequestContext(NamedTuple):
    """Who made a request."""

    uid: int
    gid: int
    pid: int
    umask: int = 0


class SetattrFields(NamedTuple):
    """Which fields a ``setattr`` changes."""

    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_size: bool = False
    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False


class StatvfsData:
    """``statfs`` results."""

    __slots__ = (
        "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
        "f_frsize", "f_namemax",
    )  # fmt: skip

    def __init__(self) -> None:
        self.f_bsize = self.f_frsize = self.f_blocks = self.f_bfree = self.f_bavail = 0
        self.f_files = self.f_ffree = self.f_favail = self.f_namemax = 0


def _split_ns(value_ns: int) -> tuple[int, int]:
    seconds, nanos = divmod(max(value_ns, 0), 1_000_000_000)
    return seconds, nanos


def _timeout(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


def _attr_fields(a: EntryAttributes) -> tuple[int, ...]:
    at, atn = _split_ns(a.st_atime_ns)
    mt, mtn = _split_ns(a.st_mtime_ns)
    ct, ctn = _split_ns(a.st_ctime_ns)
    return (
        a.st_ino, a.st_size, a.st_blocks, at, mt, ct, atn, mtn, ctn,
        a.st_mode, a.st_nlink, a.st_uid, a.st_gid, a.st_rdev, a.st_blksize, 0,
    )  # fmt: skip


def _entry_out(a: EntryAttributes) -> bytes:
    entry_s, entry_ns = _timeout(a.entry_timeout)
    attr_s, attr_ns = _timeout(a.attr_timeout)
    if a.st_ino == 0:  # a negative entry: only its timeout counts
        return _ENTRY_OUT.pack(0, 0, entry_s, 0, entry_ns, 0, *([0] * 16))
    return _ENTRY_OUT.pack(
        a.st_ino, a.generation, entry_s, attr_s, entry_ns, attr_ns, *_attr_fields(a)
    )


def _attr_out(a: EntryAttributes) -> bytes:
    attr_s, attr_ns = _timeout(a.attr_timeout)
    return _ATTR_OUT.pack(attr_s, attr_ns, 0, *_attr_fields(a))


def _open_out(info: FileInfo) -> bytes:
    flags = (_FOPEN_KEEP_CACHE if info.keep_cache else 0) | (
        _FOPEN_DIRECT_IO if info.direct_io else 0
    )
    return _OPEN_OUT.pack(info.fh, flags, 0)


def _names(body: memoryview, count: int) -> list[bytes]:
    parts = bytes(body).split(b"\0")
    if len(parts) <= count:
        raise FUSEError(errno.EINVAL)
    return parts[:count]


def _dirents(entries: Iterable[tuple[bytes, EntryAttributes, int]], size: int) -> bytes:
    out = bytearray()
    for name, attrs, offset in entries:
        record = _DIRENT.size + len(name)
        padded = (record + 7) & ~7
        if len(out) + padded > size:
            break
        out += _DIRENT.pack(attrs.st_ino, offset, len(name), stat.S_IFMT(attrs.st_mode) >> 12)
        out += name
        out += bytes(padded - record)
    return bytes(out)


Reply = bytes | list[bytes | memoryview] | None


class FUSESession:
    """One FUSE mount served by a few threads of this process.

    >>> session = FUSESession(ops, "/mnt/x", ["fsname=demo", "allow_other"])  # doctest: +SKIP
    >>> session.start(); ...; session.close()                                # doctest: +SKIP
    """

    def __init__(
        self,
        operations: Any,
        mountpoint: str,
        options: Iterable[str],
        *,
        threads: int = 2,
        lock: threading.Lock | None = None,
    ) -> None:
        self._ops = operations
        self._mountpoint = mountpoint
        self._options = ",".join(options)
        self._threads_wanted = max(1, threads)
        self._lock = lock or threading.Lock()
        self._fd = -1
        self._control: socket.socket | None = None
        self._helper: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._connection: int | None = None
        self._handlers: dict[int, Callable[[FUSESession, memoryview, _NodeContext], Reply]] = {
            _LOOKUP: FUSESession._lookup,
            _GETATTR: FUSESession._getattr,
            _SETATTR: FUSESession._setattr,
            _READLINK: FUSESession._readlink,
            _SYMLINK: FUSESession._symlink,
            _MKDIR: FUSESession._mkdir,
            _UNLINK: FUSESession._unlink,
            _RMDIR: FUSESession._rmdir,
            _RENAME: FUSESession._rename,
            _RENAME2: FUSESession._rename2,
            _LINK: FUSESession._link,
            _OPEN: FUSESession._open,
            _READ: FUSESession._read,
            _WRITE: FUSESession._write,
            _STATFS: FUSESession._statfs,
            _RELEASE: FUSESession._release,
            _FSYNC: FUSESession._fsync,
            _GETXATTR: FUSESession._getxattr,
            _LISTXATTR: FUSESession._listxattr,
            _FLUSH: FUSESession._flush,
            _OPENDIR: FUSESession._opendir,
            _READDIR: FUSESession._readdir,
            _RELEASEDIR: FUSESession._releasedir,
            _FSYNCDIR: FUSESession._fsyncdir,
            _ACCESS: FUSESession._access,
            _CREATE: FUSESession._create,
            _DESTROY: FUSESession._destroy,
        }

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Mount and start serving; returns once the kernel's INIT request is answered.

        Raises:
            EnvironmentUnavailableError: ``fusermount3`` is missing or the mount fails.
        """
        self._mount()
        try:
            self._handshake()
        except BaseException:
            self.close()
            raise
        for index in range(self._threads_wanted):
            thread = threading.Thread(
                target=self._serve,
                args=(_SPIN_SECONDS if index == 0 else 0.0,),
                name=f"sealpod-fuse-{index}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        with contextlib.suppress(OSError):
            # The connection's number in /sys/fs/fuse/connections (for _abort) is the minor
            # of the mount's device; asking needs the threads serving.
            self._connection = os.stat(self._mountpoint).st_dev

    def _mount(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = {**os.environ, "_FUSE_COMMFD": str(theirs.fileno())}
            try:
                helper = subprocess.Popen(
                    ["fusermount3", "-o", self._options, "--", self._mountpoint],
                    env=env,
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            except OSError as exc:
                raise EnvironmentUnavailableError(
                    f"cannot run fusermount3 (the fuse3 package): {exc.strerror or exc}"
                ) from exc
            theirs.close()
            try:
                _, fds, _, _ = socket.recv_fds(ours, 1, 1)
            except OSError:
                fds = []
            if not fds:
                stderr = helper.stderr.read() if helper.stderr is not None else b""
                helper.wait()
                message = stderr.decode(errors="replace").strip().splitlines()
                raise EnvironmentUnavailableError(
                    f"cannot mount at {self._mountpoint}: "
                    f"{message[-1] if message else 'fusermount3 failed'}"
                )
        except BaseException:
            ours.close()
            theirs.close()
            raise
        if helper.stderr is not None:
            helper.stderr.close()
        self._fd = fds[0]
        for extra in fds[1:]:
            os.close(extra)
        os.set_inheritable(self._fd, False)
        self._control, self._helper = ours, helper

    def _handshake(self) -> None:
        """Read and answer the kernel's INIT (always the first request)."""
        buffer = bytearray(_BUFFER_SIZE)
        while True:
            try:
                length = os.readv(self._fd, [buffer])
            except InterruptedError:
                continue
            break
        view = memoryview(buffer)[:length]
        _, opcode, unique, *_ = _IN_HEADER.unpack_from(view)
        if opcode != _INIT:
            raise EnvironmentUnavailableError(f"FUSE: the kernel's first request was {opcode}")
        major, minor, max_readahead, flags = _INIT_IN.unpack_from(view, _IN_HEADER.size)
        if major != 7:
            self._reply_error(unique, errno.EPROTO)
            raise EnvironmentUnavailableError(f"FUSE: kernel protocol {major}.{minor} unsupported")
        reply = _INIT_OUT.pack(
            7, min(minor, 38), min(max_readahead, _MAX_WRITE), flags & _WANTED_FLAGS,
            16, 12, _MAX_WRITE, 1, _MAX_PAGES_COUNT, 0, 0, *([0] * 7),
        )  # fmt: skip
        self._send(unique, reply)

    def close(self) -> None:
        """Detach the mount and stop serving; safe to call more than once."""
        control, helper, self._control, self._helper = self._control, self._helper, None, None
        if control is not None:
            # fusermount3's auto_unmount only acts once the connection is dead (this process
            # gone), so a live session detaches the mount itself, then lets the helper go.
            _detach(self._mountpoint)
            control.close()
        if helper is not None:
            try:
                helper.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _logger.warning("fusermount3 did not exit; killing it")
                helper.kill()
                helper.wait()
        threads, self._threads = self._threads, []
        deadline = time.monotonic() + 2
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            self._abort()
            for thread in threads:
                thread.join(timeout=5)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _abort(self) -> None:
        """End the connection from the kernel side (its threads are stuck in read)."""
        if self._connection is None:
            return
        path = f"/sys/fs/fuse/connections/{os.minor(self._connection)}/abort"
        if not os.path.exists(path) and os.geteuid() == 0:
            # The fusectl filesystem is not always mounted (containers, minimal systems).
            subprocess.run(
                ["mount", "-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"],
                check=False,
                capture_output=True,
                timeout=10,
            )
        try:
            with open(path, "w") as f:
                f.write("1")
        except OSError:
            _logger.debug("FUSE: cannot abort the connection through %s", path, exc_info=True)

    # -- the request loop ------------------------------------------------------------------

    def _serve(self, spin: float = 0.0) -> None:
        buffer = bytearray(_BUFFER_SIZE)
        view = memoryview(buffer)
        fd = self._fd
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        spin_until = 0.0
        while True:
            # Right after a request the next one usually follows within microseconds (a
            # program starting up): polling for it keeps this CPU awake instead of paying
            # a sleep and a cross-CPU wake-up per request (most of a round trip in a VM).
            while spin_until and time.monotonic() < spin_until and not poller.poll(0):
                pass
            try:
                length = os.readv(fd, [buffer])
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOENT:  # the request was interrupted before we read it
                    continue
                if exc.errno not in (errno.ENODEV, errno.EBADF):
                    _logger.error("FUSE: reading a request failed: %s", exc)
                return
            if length == 0:
                return
            self._dispatch(view[:length])
            if spin:
                spin_until = time.monotonic() + spin

    def _dispatch(self, request: memoryview) -> None:
        _, opcode, unique, nodeid, uid, gid, pid, _, _ = _IN_HEADER.unpack_from(request)
        if opcode in (_FORGET, _BATCH_FORGET, _INTERRUPT):
            return  # no reply; nodes live as long as the mount, requests finish quickly
        handler = self._handlers.get(opcode)
        if handler is None:
            # No ioctl is supported: ENOTTY is what a program probing one (isatty) expects.
            self._reply_error(unique, errno.ENOTTY if opcode == _IOCTL else errno.ENOSYS)
            return
        body = request[_IN_HEADER.size :]
        ctx = _NodeContext(nodeid, RequestContext(uid, gid, pid))
        try:
            with self._lock:
                reply = handler(self, body, ctx)
        except FUSEError as exc:
            self._reply_error(unique, exc.errno)
            return
        except OSError as exc:
            self._reply_error(unique, exc.errno or errno.EIO)
            return
        except Exception:
            _logger.exception("FUSE: internal error serving opcode %d", opcode)
            self._reply_error(unique, errno.EIO)
            return
        if reply is None:
            self._send(unique, b"")
        elif isinstance(reply, list):
            self._send_parts(unique, reply)
        else:
            self._send(unique, reply)

    def _send(self, unique: int, payload: bytes) -> None:
        self._send_parts(unique, [payload])

    def _send_parts(self, unique: int, parts: list[bytes | memoryview]) -> None:
        size = _OUT_HEADER.size + sum(len(p) for p in parts)
        try:
            os.writev(self._fd, [_OUT_HEADER.pack(size, 0, unique), *parts])
        except OSError as exc:
            # ENOENT: the request was interrupted and the kernel no longer waits for it.
            if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.EBADF):
                _logger.error("FUSE: writing a reply failed: %s", exc)

    def _reply_error(self, unique: int, code: int) -> None:
        try:
            os.write(self._fd, _OUT_HEADER.pack(_OUT_HEADER.size, -code, unique))
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.EBADF):
                _logger.error("FUSE: writing an error reply failed: %s", exc)

    # -- one method per opcode: (body, context) -> reply -----------------------------------

    def _call(self, name: str, *args: Any) -> Any:
        method = getattr(self._ops, name, None)
        if method is None:
            raise FUSEError(errno.ENOSYS)
        return method(*args)

    def _lookup(self, body: memoryview, ctx: _NodeContext) -> Reply:
        (name,) = _names(body, 1)
        return _entry_out(self._call("lookup", ctx.node, name, ctx.request))

    def _getattr(self, body: memoryview, ctx: _NodeContext) -> Reply:
        return _attr_out(self._call("getattr", ctx.node, ctx.request))

    def _setattr(self, body: memoryview, ctx: _NodeContext) -> Reply:
        (
            valid, _, fh, size, _, atime, mtime, ctime, atimensec, mtimensec, ctimensec,
            mode, _, uid, gid, _,
        ) = _SETATTR_IN.unpack_from(body)  # fmt: skip
        now = time.time_ns()
        attr = EntryAttributes(
            st_mode=mode,
            st_uid=uid,
            st_gid=gid,
            st_size=size,
            st_atime_ns=now if valid & _FATTR_ATIME_NOW else atime * 1_000_000_000 + atimensec,
            st_mtime_ns=now if valid & _FATTR_MTIME_NOW else mtime * 1_000_000_000 + mtimensec,
            st_ctime_ns=ctime * 1_000_000_000 + ctimensec,
        )
        fields = SetattrFields(
            update_mode=bool(valid & _FATTR_MODE),
            update_uid=bool(valid & _FATTR_UID),
            update_gid=bool(valid & _FATTR_GID),
            update_size=bool(valid & _FATTR_SIZE),
            update_atime=bool(valid & (_FATTR_ATIME | _FATTR_ATIME_NOW)),
            update_mtime=bool(valid & (_FATTR_MTIME | _FATTR_MTIME_NOW)),
            update_ctime=bool(valid & _FATTR_CTIME),
        )
        handle = fh if valid & _FATTR_FH else None
        return _attr_out(self._call("setattr", ctx.node, attr, fields, handle, ctx.request))

    def _readlink(self, body: memoryview, ctx: _NodeContext) -> Reply:
        return bytes(self._call("readlink", ctx.node, ctx.request))

    def _symlink(self, body: memoryview, ctx: _NodeContext) -> Reply:
        name, target = _names(body, 2)
        return _entry_out(self._call("symlink", ctx.node, name, target, ctx.request))

    def _mkdir(self, body: memoryview, ctx: _NodeContext) -> Reply:
        mode, umask = _MKDIR_IN.unpack_from(body)
        (name,) = _names(body[_MKDIR_IN.size :], 1)
        request = RequestContext(ctx.request.uid, ctx.request.gid, ctx.request.pid, umask)
        return _entry_out(self._call("mkdir", ctx.node, name, mode, request))

    def _unlink(self, body: memoryview, ctx: _NodeContext) -> Reply:
        (name,) = _names(body, 1)
        self._call("unlink", ctx.node, name, ctx.request)
        return None

    def _rmdir(self, body: memoryview, ctx: _NodeContext) -> Reply:
        (name,) = _names(body, 1)
        self._call("rmdir", ctx.node, name, ctx.request)
        return None

    def _rename(self, body: memoryview, ctx: _NodeContext) -> Reply:
        (newdir,) = _RENAME_IN.unpack_from(body)
        old, new = _names(body[_RENAME_IN.size :], 2)
        self._call("rename", ctx.node, old, newdir, new, 0, ctx.request)
        return None

    def _rename2(self, body: memoryview, ctx: _NodeContext) -> Reply:
        newdir, flags, _ = _RENAME2_IN.unpack_from(body)
        old, new = _names(body[_RENAME2_IN.size :], 2)
        self._call("rename", ctx.node, old, newdir, new, flags, ctx.request)
        return None

    def _link(self, body: memoryview, ctx: _NodeContext) -> Reply:
        (old_node,) = _LINK_IN.unpack_from(body)
        (name,) = _names(body[_LINK_IN.size :], 1)
        return _entry_out(self._call("link", old_node, ctx.node, name, ctx.request))

    def _open(self, body: memoryview, ctx: _NodeContext) -> Reply:
        flags, _ = _OPEN_IN.unpack_from(body)
        return _open_out(self._call("open", ctx.node, flags, ctx.request))

    def _read(self, body: memoryview, ctx: _NodeContext) -> Reply:
        fh, offset, size, _ = _READ_IN.unpack_from(body)
        return [self._call("read", fh, offset, size)]

    def _write(self, body: memoryview, ctx: _NodeContext) -> Reply:
        fh, offset, size, _ = _READ_IN.unpack_from(body)
        data = bytes(body[_WRITE_IN_SIZE : _WRITE_IN_SIZE + size])
        written = self._call("write", fh, offset, data)
        return _U32_PAIR.pack(written, 0)

    def _statfs(self, body: memoryview, ctx: _NodeContext) -> Reply:
        s = self._call("statfs", ctx.request)
        return _KSTATFS.pack(
            s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree,
            s.f_bsize, s.f_namemax, s.f_frsize, 0, *([0] * 6),
        )  # fmt: skip

    def _release(self, body: memoryview, ctx: _NodeContext) -> Reply:
        (fh,) = _RELEASE_IN.unpack_from(body)
        self._call("release", fh)
        return None

    def _fsync(self, body: memoryview, ctx: _NodeContext) -> Reply:
        fh, flags = _FSYNC_IN.unpack_from(body)
        self._call("fsync", fh, bool(flags & 1))
        return None

    def _getxattr(self, body: memoryview, ctx: _NodeContext) -> Reply:
        size, _ = _GETXATTR_IN.unpack_from(body)
        (name,) = _names(body[_GETXATTR_IN.size :], 1)
        value = bytes(self._call("getxattr", ctx.node, name, ctx.request))
        if size == 0:
            return _U32_PAIR.pack(len(value), 0)
        if len(value) > size:
            raise FUSEError(errno.ERANGE)
        return value

    def _listxattr(self, body: memoryview, ctx: _NodeContext) -> Reply:
        size, _ = _GETXATTR_IN.unpack_from(body)
        names = b"".join(n + b"\0" for n in self._call("listxattr", ctx.node, ctx.request))
        if size == 0:
            return _U32_PAIR.pack(len(names), 0)
        if len(names) > size:
            raise FUSEError(errno.ERANGE)
        return names

    def _flush(self, body: memoryview, ctx: _NodeContext) -> Reply:
        (fh,) = _RELEASE_IN.unpack_from(body)
        self._call("flush", fh)
        return None

    def _opendir(self, body: memoryview, ctx: _NodeContext) -> Reply:
        fh = self._call("opendir", ctx.node, ctx.request)
        return _OPEN_OUT.pack(fh, 0, 0)

    def _readdir(self, body: memoryview, ctx: _NodeContext) -> Reply:
        fh, offset, size, _ = _READ_IN.unpack_from(body)
        return _dirents(self._call("readdir", fh, offset), size)

    def _releasedir(self, body: memoryview, ctx: _NodeContext) -> Reply:
        (fh,) = _RELEASE_IN.unpack_from(body)
        self._call("releasedir", fh)
        return None

    def _fsyncdir(self, body: memoryview, ctx: _NodeContext) -> Reply:
        return None

    def _access(self, body: memoryview, ctx: _NodeContext) -> Reply:
        (mask,) = _ACCESS_IN.unpack_from(body)
        if not self._call("access", ctx.node, mask, ctx.request):
            raise FUSEError(errno.EACCES)
        return None

    def _create(self, body: memoryview, ctx: _NodeContext) -> Reply:
        flags, mode, umask, _ = _CREATE_IN.unpack_from(body)
        (name,) = _names(body[_CREATE_IN.size :], 1)
        request = RequestContext(ctx.request.uid, ctx.request.gid, ctx.request.pid, umask)
        info, attrs = self._call("create", ctx.node, name, mode, flags, request)
        return _entry_out(attrs) + _open_out(info)

    def _destroy(self, body: memoryview, ctx: _NodeContext) -> Reply:
        return None


def _detach(mountpoint: str) -> None:
    """Lazily unmount ``mountpoint`` (``umount2(MNT_DETACH)`` as root, else fusermount3)."""
    if os.geteuid() == 0:
        import ctypes  # only needed here, and not free to import

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.umount2(os.fsencode(mountpoint), 2) == 0:  # 2: MNT_DETACH
            return
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOENT):  # not (or no longer) a mount point
            return
        _logger.debug("FUSE: umount2(%s) failed: %s", mountpoint, os.strerror(code))
    subprocess.run(
        ["fusermount3", "-u", "-z", "-q", "--", mountpoint],
        check=False,
        capture_output=True,
        timeout=10,
    )


class _NodeContext(NamedTuple):
    node: int
    request: RequestContext
