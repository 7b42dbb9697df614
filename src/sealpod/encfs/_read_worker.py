"""A second core for large authenticated reads: one helper process that decrypts data nodes.

The format seals every 4 KiB node under its own key, so one Python thread is bound by the
per-node cost and threads do not help (the work holds the GIL). A large read
(:class:`~sealpod.encfs._reader.TreeReader`; a mounted volume reads 1 MiB at a time) hands the
whole nodes of its later MHT groups to this helper and decrypts the rest itself meanwhile.

What crosses to the helper, per group: which file (the reader's descriptor, which the helper
opens again through ``/proc/<reader pid>/fd``, checked by device and inode), where the
ciphertext lies, and each node's key and tag, taken from an MHT node the reader has already
authenticated. The helper reads the ciphertext itself, so only keys and plaintext cross, through
an anonymous shared memory region (``memfd``: never a named file, never on disk). Back comes a
status per group: -1, the first node that failed authentication (which the reader turns into the
same ``encfs_bad_mac`` refusal as its own check), or "could not read" (the reader then does that
group itself). The helper is a fresh interpreter (``python -m sealpod.encfs._read_worker``),
never a fork of the threaded shield, started on first use without waiting for it; until it is
ready, or after it dies, the reader decrypts everything itself.
"""

from __future__ import annotations

import atexit
import logging
import mmap
import os
import select
import struct
import subprocess
import sys
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["MAX_NODES", "UNREADABLE", "DecryptHelper", "GroupRequest", "helper"]

_logger = logging.getLogger(__name__)

_NODE = 4096
_ENTRY = 32  # key (16) + tag (16), as in an MHT node
_IV = bytes(12)
#: Nodes the helper holds at once (more than half of a 1 MiB read).
MAX_NODES = 256
#: Status: the helper could not read the ciphertext (the reader does the group itself).
UNREADABLE = -2
_PLAIN_AT = MAX_NODES * _ENTRY
_REGION = _PLAIN_AT + MAX_NODES * _NODE
_REQUEST = struct.Struct("<iQQQii")  # fd, st_dev, st_ino, file offset, nodes, slot
_STATUS = struct.Struct("<i")
_READY = b"rdy\n"


class GroupRequest:
    """One contiguous run of whole nodes handed to the helper."""

    __slots__ = ("nodes", "out", "slot")

    def __init__(self, slot: int, nodes: int, out: memoryview) -> None:
        self.slot, self.nodes, self.out = slot, nodes, out


class DecryptHelper:
    """The reader's side. One batch at a time: :meth:`submit` then :meth:`collect`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = False
        self._dead = False
        self._process: subprocess.Popen[bytes] | None = None
        self._memfd = os.memfd_create("sealpod-decrypt", os.MFD_CLOEXEC)
        os.ftruncate(self._memfd, _REGION)
        self._region = mmap.mmap(self._memfd, _REGION)
        self._view = memoryview(self._region)
        command_r, self._commands = os.pipe()
        self._replies, reply_w = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "sealpod.encfs._read_worker",
                 str(command_r), str(reply_w), str(self._memfd), str(os.getpid())],
                pass_fds=(command_r, reply_w, self._memfd),
                stdin=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                     "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            )  # fmt: skip
        except OSError as exc:
            _logger.info("encfs: no decryption helper (%s): decrypting on one core", exc)
            self._dead = True
        finally:
            os.close(command_r)
            os.close(reply_w)

    def available(self) -> bool:
        """Whether the helper is up (never waits for it)."""
        if not self._ready and not self._dead:
            if select.select([self._replies], [], [], 0)[0]:
                self._ready = os.read(self._replies, len(_READY)) == _READY
                self._dead = not self._ready
        return self._ready and not self._dead

    def send(self, fd: int, runs: list[tuple[int, memoryview, memoryview]]) -> list[GroupRequest]:
        """Hand ``runs`` of whole nodes (file offset of the first node's ciphertext, its
        (key, tag) entries, where its plaintext goes) to the helper, at most
        :data:`MAX_NODES` nodes in all. Holds the helper until :meth:`collect`.

        Raises:
            OSError: the helper is gone (nothing is held then).
        """
        self._lock.acquire()
        try:
            st = os.fstat(fd)
            requests: list[GroupRequest] = []
            slot = 0
            commands = []
            for file_offset, entries, out in runs:
                nodes = len(entries) // _ENTRY
                self._view[slot * _ENTRY : (slot + nodes) * _ENTRY] = entries
                commands.append(_REQUEST.pack(fd, st.st_dev, st.st_ino, file_offset, nodes, slot))
                requests.append(GroupRequest(slot, nodes, out))
                slot += nodes
            os.write(self._commands, b"".join(commands))
            return requests
        except BaseException as exc:
            if isinstance(exc, OSError):
                self._dead = True
            self._lock.release()
            raise

    def collect(self, requests: list[GroupRequest]) -> list[int]:
        """Wait for the helper's answers; copy each good run's plaintext to its ``out``.

        Returns one status per request: -1 (done), the index of the first node that failed
        authentication (``out`` untouched), or :data:`UNREADABLE`.
        """
        try:
            statuses = []
            for request in requests:
                status = UNREADABLE
                if not self._dead:
                    try:
                        status = self._status()
                    except OSError:
                        self._dead = True
                if status == -1:
                    at = _PLAIN_AT + request.slot * _NODE
                    request.out[:] = self._view[at : at + request.nodes * _NODE]
                statuses.append(status)
            return statuses
        finally:
            self._lock.release()

    def _status(self) -> int:
        reply = b""
        while len(reply) < _STATUS.size:
            got = os.read(self._replies, _STATUS.size - len(reply))
            if not got:
                raise OSError("the decryption helper exited")
            reply += got
        return int(_STATUS.unpack(reply)[0])

    def close(self) -> None:
        """Stop the helper and wipe the shared region (safe to call more than once)."""
        if self._memfd < 0:
            return
        self._dead = True
        os.close(self._commands)  # EOF: the helper exits
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        os.close(self._replies)
        self._view[:] = bytes(_REGION)
        self._view.release()
        self._region.close()
        os.close(self._memfd)
        self._memfd = -1


_helper: DecryptHelper | None = None
_helper_lock = threading.Lock()


def helper() -> DecryptHelper | None:
    """This process's helper, started on first call; ``None`` with one CPU, when turned off
    (``SEALPOD_ENCFS_HELPER=0``), or when it cannot run."""
    global _helper
    if _helper is None:
        if os.environ.get("SEALPOD_ENCFS_HELPER", "1") == "0" or len(os.sched_getaffinity(0)) < 2:
            return None
        with _helper_lock:
            if _helper is None:
                _helper = DecryptHelper()
                atexit.register(_helper.close)
    return None if _helper._dead else _helper


# -- the helper process ------------------------------------------------------------------------


def _serve(commands: int, replies: int, memfd: int, reader_pid: int) -> None:
    region = mmap.mmap(memfd, _REGION)
    view = memoryview(region)
    files: dict[tuple[int, int, int], int] = {}
    sealed = bytearray(MAX_NODES * _NODE)
    os.write(replies, _READY)
    pending = b""
    while True:
        got = os.read(commands, 64 * _REQUEST.size)
        if not got:
            return
        pending += got
        while len(pending) >= _REQUEST.size:
            request, pending = pending[: _REQUEST.size], pending[_REQUEST.size :]
            status = _decrypt_request(request, view, files, sealed, reader_pid)
            os.write(replies, _STATUS.pack(status))


def _decrypt_request(
    request: bytes,
    view: memoryview,
    files: dict[tuple[int, int, int], int],
    sealed: bytearray,
    reader_pid: int,
) -> int:
    fd, dev, ino, file_offset, nodes, slot = _REQUEST.unpack(request)
    if not 0 < nodes <= MAX_NODES - slot or slot < 0:
        return UNREADABLE
    own = _reopen(files, (fd, dev, ino), reader_pid)
    if own < 0:
        return UNREADABLE
    raw = memoryview(sealed)[: nodes * _NODE]
    try:
        if os.preadv(own, [raw], file_offset) != len(raw):
            return UNREADABLE
    except OSError:
        return UNREADABLE
    entries = bytes(view[slot * _ENTRY : (slot + nodes) * _ENTRY])
    plain = view[_PLAIN_AT + slot * _NODE : _PLAIN_AT + (slot + nodes) * _NODE]
    join = b"".join
    for number in range(nodes):
        at = number * _ENTRY
        start = number * _NODE
        try:
            AESGCM(entries[at : at + 16]).decrypt_into(
                _IV,
                join((raw[start : start + _NODE], entries[at + 16 : at + 32])),
                None,
                plain[start : start + _NODE],
            )
        except InvalidTag:
            return number
    return -1


def _reopen(files: dict[tuple[int, int, int], int], key: tuple[int, int, int], pid: int) -> int:
    own = files.get(key, -1)
    if own >= 0:
        return own
    try:
        own = os.open(f"/proc/{pid}/fd/{key[0]}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1
    st = os.fstat(own)
    if (st.st_dev, st.st_ino) != key[1:]:
        os.close(own)
        return -1
    for stale in [k for k in files if k[0] == key[0]]:
        os.close(files.pop(stale))
    files[key] = own
    return own


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
