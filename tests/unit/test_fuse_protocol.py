"""The FUSE session's request decoding and reply encoding, without a mount.

Requests are built here from the layouts in ``<linux/fuse.h>`` (protocol 7.38) and fed to the
session's dispatcher; replies are read back from a pipe standing in for ``/dev/fuse``. Sizes and
offsets below are the kernel header's, not the module's constants.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from sealpod.runtime import _fuse as fuse

# <linux/fuse.h> opcodes
LOOKUP, GETATTR, OPEN, READ, WRITE, FLUSH, READDIR, CREATE, SETATTR = (
    1,
    3,
    14,
    15,
    16,
    25,
    28,
    35,
    4,
)
IOCTL = 39
IN_HEADER = struct.Struct("<IIQQIIIHH")  # 40 bytes
OUT_HEADER = struct.Struct("<IiQ")  # 16 bytes


class _Ops:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def lookup(self, parent: int, name: bytes, ctx: fuse.RequestContext) -> fuse.EntryAttributes:
        self.calls.append(("lookup", parent, name, ctx.uid, ctx.gid, ctx.pid))
        if name == b"missing":
            return fuse.EntryAttributes(st_ino=0, entry_timeout=2.5)
        if name == b"bug":
            raise ValueError("a bug in a handler")
        if name == b"denied":
            raise fuse.FUSEError(errno.EACCES)
        return fuse.EntryAttributes(
            st_ino=42,
            generation=7,
            entry_timeout=1.5,
            attr_timeout=0.25,
            st_mode=stat.S_IFREG | 0o644,
            st_nlink=1,
            st_uid=1000,
            st_gid=1001,
            st_size=12345,
            st_blksize=4096,
            st_blocks=25,
            st_atime_ns=1_700_000_000_123_456_789,
            st_mtime_ns=1_700_000_001_000_000_001,
            st_ctime_ns=1_700_000_002_999_999_999,
        )

    def open(self, inode: int, flags: int, ctx: fuse.RequestContext) -> fuse.FileInfo:
        self.calls.append(("open", inode, flags))
        return fuse.FileInfo(fh=99, keep_cache=True)

    def read(self, fh: int, offset: int, size: int) -> bytes:
        self.calls.append(("read", fh, offset, size))
        return b"x" * min(size, 10)

    def write(self, fh: int, offset: int, data: bytes) -> int:
        self.calls.append(("write", fh, offset, data))
        return len(data)

    def readdir(self, fh: int, start: int) -> Iterator[tuple[bytes, fuse.EntryAttributes, int]]:
        names = [b"a", b"bbbbbbbbb", b"c"]
        for index in range(start, len(names)):
            mode = stat.S_IFDIR if index == 1 else stat.S_IFREG
            yield names[index], fuse.EntryAttributes(st_ino=10 + index, st_mode=mode), index + 1

    def setattr(
        self,
        inode: int,
        attr: fuse.EntryAttributes,
        fields: fuse.SetattrFields,
        fh: int | None,
        ctx: fuse.RequestContext,
    ) -> fuse.EntryAttributes:
        self.calls.append(("setattr", inode, attr.st_size, fields, fh))
        return fuse.EntryAttributes(st_ino=inode, st_mode=stat.S_IFREG, st_size=attr.st_size)


@pytest.fixture
def session() -> Iterator[tuple[fuse.FUSESession, _Ops, int]]:
    ops = _Ops()
    read_end, write_end = os.pipe()
    s = fuse.FUSESession(ops, "/nonexistent", [])
    s._fd = write_end  # replies go to the pipe
    try:
        yield s, ops, read_end
    finally:
        os.close(read_end)
        os.close(write_end)


def _request(opcode: int, unique: int, nodeid: int, body: bytes) -> memoryview:
    header = IN_HEADER.pack(
        IN_HEADER.size + len(body), opcode, unique, nodeid, 1000, 1001, 4242, 0, 0
    )
    return memoryview(header + body)


def _reply(read_end: int) -> tuple[int, int, bytes]:
    data = os.read(read_end, 1 << 20)
    length, error, unique = OUT_HEADER.unpack_from(data)
    assert length == len(data)
    return error, unique, data[OUT_HEADER.size :]


def test_lookup_reply_is_a_128_byte_entry_out_with_split_times(session: Any) -> None:
    s, ops, out = session
    s._dispatch(_request(LOOKUP, 5, 1, b"file\0"))
    error, unique, body = _reply(out)
    assert (error, unique, len(body)) == (0, 5, 128)
    nodeid, generation, entry_valid, attr_valid, entry_nsec, attr_nsec = struct.unpack_from(
        "<QQQQII", body
    )
    assert (nodeid, generation, entry_valid, entry_nsec) == (42, 7, 1, 500_000_000)
    assert (attr_valid, attr_nsec) == (0, 250_000_000)
    attr = struct.unpack_from("<QQQQQQIIIIIIIIII", body, 40)
    ino, size, blocks, atime, mtime, ctime, atimensec, mtimensec, ctimensec = attr[:9]
    mode, nlink, uid, gid, _rdev, blksize, _flags = attr[9:]
    assert (ino, size, blocks) == (42, 12345, 25)
    assert (atime, atimensec) == (1_700_000_000, 123_456_789)
    assert (mtime, mtimensec) == (1_700_000_001, 1)
    assert (ctime, ctimensec) == (1_700_000_002, 999_999_999)
    assert (mode, nlink, uid, gid, blksize) == (stat.S_IFREG | 0o644, 1, 1000, 1001, 4096)
    assert ops.calls == [("lookup", 1, b"file", 1000, 1001, 4242)]


def test_negative_lookup_is_node_zero_with_its_timeout(session: Any) -> None:
    s, _, out = session
    s._dispatch(_request(LOOKUP, 6, 1, b"missing\0"))
    error, _, body = _reply(out)
    nodeid, _, entry_valid, _, entry_nsec, _ = struct.unpack_from("<QQQQII", body)
    assert (error, nodeid, entry_valid, entry_nsec) == (0, 0, 2, 500_000_000)


def test_handler_errno_becomes_a_negative_error_reply(session: Any) -> None:
    s, _, out = session
    s._dispatch(_request(LOOKUP, 7, 1, b"denied\0"))
    assert _reply(out) == (-errno.EACCES, 7, b"")


def test_a_bug_in_a_handler_is_eio_and_the_session_goes_on(
    session: Any, caplog: pytest.LogCaptureFixture
) -> None:
    s, _, out = session
    s._dispatch(_request(LOOKUP, 8, 1, b"bug\0"))
    assert _reply(out) == (-errno.EIO, 8, b"")
    assert any("internal error" in r.getMessage() for r in caplog.records)
    s._dispatch(_request(LOOKUP, 9, 1, b"file\0"))
    assert _reply(out)[:2] == (0, 9)


def test_name_without_terminator_is_refused_as_einval(session: Any) -> None:
    s, ops, out = session
    s._dispatch(_request(LOOKUP, 10, 1, b"no-nul"))
    assert _reply(out) == (-errno.EINVAL, 10, b"")
    assert ops.calls == []


def test_unserved_opcodes_get_enosys(session: Any) -> None:
    s, _, out = session
    for unique, opcode in ((12, FLUSH), (13, 9999)):
        s._dispatch(_request(opcode, unique, 1, bytes(64)))
        assert _reply(out) == (-errno.ENOSYS, unique, b"")
    s._dispatch(_request(IOCTL, 11, 1, bytes(64)))
    assert _reply(out) == (-errno.ENOTTY, 11, b"")  # what isatty() expects
    s._dispatch(_request(GETATTR, 14, 1, bytes(16)))  # the ops object has no getattr
    assert _reply(out) == (-errno.ENOSYS, 14, b"")


def test_open_reply_carries_keep_cache(session: Any) -> None:
    s, ops, out = session
    s._dispatch(_request(OPEN, 15, 3, struct.pack("<II", os.O_RDONLY, 0)))
    error, _, body = _reply(out)
    fh, open_flags, _ = struct.unpack("<QII", body)
    assert (error, fh, open_flags) == (0, 99, 2)  # FOPEN_KEEP_CACHE is bit 1
    assert ops.calls == [("open", 3, os.O_RDONLY)]


def test_read_and_write_decode_their_40_byte_headers(session: Any) -> None:
    s, ops, out = session
    read_in = struct.pack("<QQIIQII", 99, 4096, 100, 0, 0, 0, 0)
    s._dispatch(_request(READ, 16, 3, read_in))
    assert _reply(out) == (0, 16, b"x" * 10)
    write_in = struct.pack("<QQIIQII", 99, 8, 5, 0, 0, 0, 0) + b"hello" + b"trailing"
    s._dispatch(_request(WRITE, 17, 3, write_in))
    error, _, body = _reply(out)
    assert (error, struct.unpack("<II", body)) == (0, (5, 0))
    assert ops.calls == [("read", 99, 4096, 100), ("write", 99, 8, b"hello")]


def test_readdir_packs_aligned_dirents_and_stops_at_the_size(session: Any) -> None:
    s, _, out = session
    s._dispatch(_request(READDIR, 18, 1, struct.pack("<QQIIQII", 1, 0, 4096, 0, 0, 0, 0)))
    error, _, body = _reply(out)
    # dirent: ino, off, namelen, type, name, padded to 8 bytes: 24+1 -> 32, 24+9 -> 40.
    assert error == 0 and len(body) == 32 + 40 + 32
    ino, off, namelen, kind = struct.unpack_from("<QQII", body, 32)
    assert (ino, off, namelen, kind, body[56:65]) == (11, 2, 9, stat.S_IFDIR >> 12, b"bbbbbbbbb")
    s._dispatch(_request(READDIR, 19, 1, struct.pack("<QQIIQII", 1, 0, 60, 0, 0, 0, 0)))
    assert len(_reply(out)[2]) == 32  # the second entry would not fit in 60 bytes
    s._dispatch(_request(READDIR, 20, 1, struct.pack("<QQIIQII", 1, 3, 4096, 0, 0, 0, 0)))
    assert _reply(out) == (0, 20, b"")  # at the end


def test_setattr_decodes_size_and_fh_from_the_88_byte_request(session: Any) -> None:
    s, ops, out = session
    valid = 8 | 64  # FATTR_SIZE | FATTR_FH
    body = struct.pack("<IIQQQQQQIIIIIIII", valid, 0, 77, 1234, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    s._dispatch(_request(SETATTR, 21, 5, body))
    error, _, reply = _reply(out)
    assert error == 0 and len(reply) == 104  # fuse_attr_out
    (_, inode, size, fields, fh) = ops.calls[0]
    assert (inode, size, fh) == (5, 1234, 77)
    assert fields.update_size and not fields.update_mode and not fields.update_mtime


def test_create_reply_is_entry_out_then_open_out(session: Any) -> None:
    class _Creating(_Ops):
        def create(
            self, parent: int, name: bytes, mode: int, flags: int, ctx: fuse.RequestContext
        ) -> tuple[fuse.FileInfo, fuse.EntryAttributes]:
            self.calls.append(("create", parent, name, mode, flags, ctx.umask))
            return fuse.FileInfo(fh=5), fuse.EntryAttributes(st_ino=8, st_mode=stat.S_IFREG)

    s, _, out = session
    ops = _Creating()
    s._ops = ops
    body = struct.pack("<IIII", os.O_WRONLY | os.O_CREAT, 0o100644, 0o022, 0) + b"new\0"
    s._dispatch(_request(CREATE, 22, 1, body))
    error, _, reply = _reply(out)
    assert error == 0 and len(reply) == 128 + 16
    assert struct.unpack_from("<Q", reply, 128)[0] == 5
    assert ops.calls == [("create", 1, b"new", 0o100644, os.O_WRONLY | os.O_CREAT, 0o022)]
