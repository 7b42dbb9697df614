"""Encrypted volumes with rollback protection: encrypted files plus a signed volume record.

A volume is a host directory::

    DIR/volume.json           the committed volume record (signed)
    DIR/volume.pending.json   a commit in progress (at most one)
    DIR/volume.journal        redo journal of node images (ciphertext only)
    DIR/objects/<id>          one Gramine encrypted file per regular file
    DIR/new/<id>              files created since the last commit

File names are hidden: each regular file is stored under a random 128-bit object id and bound
(Gramine's bound path) to ``"<volume name>/<id>"``; the record maps the logical paths, directory
tree, sizes and modes to objects. Every object is still a plain Gramine encrypted file under the
volume key (``sealpod fs decrypt -k KEY --path NAME/ID``). Renames change only the record.

**The record** lists, for each file, its object id, plaintext size, mode, mtime and the root MAC
of its metadata node (which covers its whole Merkle tree); every directory; the volume name and
a version that grows by one per commit. It is authenticated with HMAC-SHA256 under a key derived
from the volume key (HKDF-SHA256, info ``sealpod-volume-record-v1``), so only key holders can
produce one. The volume **tag** is SHA-256 over the canonical record (JSON, sorted keys, no
whitespace). A :class:`TagAuthority` (the coordinator) keeps the latest tag of each volume.

**Opening** verifies the record's HMAC and name, compares its tag with the expected tag (given,
or from the authority), then checks the directory against it: each file's object exists, is
bound to its id, has the recorded root MAC and is long enough; no unreferenced object exists.
Any older file, older snapshot, missing or extra file or file moved to another path raises
``VerificationError("rollback_detected", ...)`` naming the path. Every node read later is
authenticated up to that root MAC (``deep=True`` reads every node at open).

**Commit** (:meth:`Volume.commit`; the runtime calls it on fsync, close and unmount):

1. flush every written file: new nodes and metadata go to the journal (for host offsets the last
   record refers to) or straight to the object file (past its committed end; new objects);
2. fsync the journal, the objects written directly and ``new/``;
3. write ``volume.pending.json`` (new record, its HMAC, journal length, deleted objects)
   atomically: temp file, fsync, rename, fsync of the directory;
4. report ``(version, tag)`` to the authority. The commit counts from here, not before;
5. apply: copy the journal into the objects, move ``new/`` objects into ``objects/``, cut each
   object to its size, delete removed objects, fsync them and the directories;
6. rename the pending record over ``volume.json``, fsync the directory, empty the journal.

What a crash (SIGKILL of the application or runtime, or power loss) leaves, given that the
authority's tag is the truth: before step 4 completes at the authority, the expected tag is the
old record's, every node the old record refers to is intact (steps 1-3 never overwrite one) and
reopening discards the pending record, journal, ``new/`` objects and any tail written past an
object's committed end: **exactly the old committed state**. Once the authority holds the new
tag, reopening finds the pending record whose tag it is and redoes steps 5-6 (idempotent): **exactly
the new committed state**. If the host loses or damages the pending record or journal in between,
or the authority refuses the report, the files no longer match the expected tag and opening
raises ``rollback_detected`` or ``volume_journal_damaged``: **a detected inconsistency**, never
silently wrong data. Only an authorised reset of the tag at the coordinator (which audits it)
makes such a volume usable again; :func:`inspect_volume` shows what is on disk for that decision.

Speed: an open file keeps its decrypted-node cache between calls; a new (or emptied) file that
is only appended to is written by :class:`~sealpod.encfs._writer.AppendWriter` (each node sealed
once, straight to the host file), and a file with nothing uncommitted is read by
:class:`~sealpod.encfs._reader.TreeReader` (one host read per MHT group). Both produce and
check exactly the Gramine format, as :class:`~sealpod.encfs.EncryptedFile` does.

The guarantee is per volume commit: writes not yet committed when the crash hits are lost (as
for any file system without fsync). Without an authority and expected tag a volume still detects
tampering of single files and records, but not the replay of a whole older directory; opening it
so logs a warning every time.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sealpod.encfs import _format as fmt
from sealpod.encfs._journal import Journal, JournaledNodeStore, fsync, pwrite_all
from sealpod.encfs._reader import TreeReader
from sealpod.encfs._store import FileNodeStore
from sealpod.encfs._writer import AppendWriter
from sealpod.encfs.file import EncryptedFile
from sealpod.errors import ConfigError, SealpodError, VerificationError

_logger = logging.getLogger(__name__)

RECORD_NAME = "volume.json"
PENDING_NAME = "volume.pending.json"
JOURNAL_NAME = "volume.journal"
OBJECTS_DIR = "objects"
NEW_DIR = "new"
RECORD_TYPE = "sealpod-volume-record"
RECORD_FORMAT = 1
_HKDF_INFO = b"sealpod-volume-record-v1"
_MAX_NAME = 200
#: Decrypted nodes cached per open file (4 KiB each).
_CACHE_NODES = 1024
#: Files kept open (with their node caches) after their last use.
_OPEN_FILES = 64
_ID_HEX = frozenset("0123456789abcdef")


# -- the record ------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class FileEntry(_Model):
    """One regular file of a volume record."""

    object: str = Field(pattern=r"^[0-9a-f]{32}$")
    size: int = Field(ge=0)
    mac: str = Field(pattern=r"^[0-9a-f]{32}$")
    mode: int = Field(ge=0, le=0o7777)
    mtime_ns: int = Field(ge=0)


class DirEntry(_Model):
    """One directory of a volume record."""

    mode: int = Field(ge=0, le=0o7777)
    mtime_ns: int = Field(ge=0)


class VolumeRecord(_Model):
    """The signed content of ``volume.json``: what a volume holds at one version."""

    type: str = Field(pattern=f"^{RECORD_TYPE}$")
    format: int = Field(ge=RECORD_FORMAT, le=RECORD_FORMAT)
    name: str = Field(min_length=1, max_length=_MAX_NAME)
    version: int = Field(ge=1)
    dirs: dict[str, DirEntry]
    files: dict[str, FileEntry]

    def canonical(self) -> bytes:
        """The canonical JSON (sorted keys, no whitespace) that is signed and hashed."""
        return _canonical(self.model_dump(mode="json"))

    def tag(self) -> bytes:
        """SHA-256 over the canonical record."""
        return hashlib.sha256(self.canonical()).digest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_key(volume_key: bytes) -> bytes:
    """The HMAC-SHA256 key that signs volume records, derived from the volume key (HKDF).

    Raises:
        ConfigError: ``volume_key`` is not a 16-byte key.
    """
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
    return hkdf.derive(fmt.check_key(volume_key))


def _sign(record: VolumeRecord, key: bytes) -> bytes:
    return hmac.new(record_key(key), record.canonical(), hashlib.sha256).digest()


@dataclass(frozen=True)
class _Stored:
    record: VolumeRecord
    journal_length: int = 0
    deleted: tuple[str, ...] = ()


def _load_record(path: Path, key: bytes, *, pending: bool) -> _Stored:
    """Read, authenticate and parse a record file.

    Raises:
        VerificationError: ``volume_bad_record`` (not a record, wrong key or modified).
        FileNotFoundError: there is no such file.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        document = json.loads(raw)
        if not isinstance(document, dict):
            raise ValueError("not an object")
        signature = bytes.fromhex(str(document["hmac"]))
        body = document["record"]
        expected = hmac.new(record_key(key), _canonical(body), hashlib.sha256).digest()
        if not hmac.compare_digest(signature, expected):
            raise VerificationError(
                "volume_bad_record", f"{path.name} fails authentication (wrong key or modified)"
            )
        record = VolumeRecord.model_validate(body)
        journal_length = int(document.get("journal_length", 0)) if pending else 0
        deleted = tuple(str(d) for d in document.get("deleted", ())) if pending else ()
    except VerificationError:
        raise
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise VerificationError("volume_bad_record", f"{path.name} is not a volume record") from exc
    if any(not _is_object_id(d) for d in deleted) or journal_length < 0:
        raise VerificationError("volume_bad_record", f"{path.name} is malformed")
    return _Stored(record, journal_length, deleted)


def _is_object_id(name: str) -> bool:
    return len(name) == 32 and set(name) <= _ID_HEX


def _write_atomic(directory: Path, name: str, data: bytes) -> None:
    """temp file + fsync + rename + fsync of the directory."""
    tmp = directory / f".{name}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            pwrite_all(fd, data, 0, str(tmp))
            fsync(fd, str(tmp))
        finally:
            os.close(fd)
        os.replace(tmp, directory / name)
    except OSError as exc:
        raise ConfigError(f"cannot write {directory / name}: {exc.strerror or exc}") from exc
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open {directory}: {exc.strerror or exc}") from exc
    try:
        fsync(fd, str(directory))
    finally:
        os.close(fd)


def _record_document(record: VolumeRecord, key: bytes, **extra: Any) -> bytes:
    document = {"record": record.model_dump(mode="json"), "hmac": _sign(record, key).hex()}
    document.update(extra)
    return json.dumps(document, sort_keys=True, indent=1).encode() + b"\n"


# -- the tag authority -----------------------------------------------------------------------


@runtime_checkable
class TagAuthority(Protocol):
    """Who keeps the latest tag of each volume (the coordinator, over the attested channel)."""

    def current_tag(self, volume: str) -> bytes | None:
        """The latest accepted tag of ``volume``, or None if it has none yet."""
        ...

    def report_tag(self, volume: str, version: int, tag: bytes) -> None:
        """Accept ``tag`` as the latest of ``volume`` at ``version``, or raise.

        Implementations refuse a version that is not newer than the latest accepted one
        (a replayed or older report) with a :class:`~sealpod.errors.SealpodError`.
        """
        ...


class LocalTagAuthority:
    """An in-memory :class:`TagAuthority` (tests, single-process tools). Not persistent."""

    def __init__(self) -> None:
        self._tags: dict[str, tuple[int, bytes]] = {}

    def current_tag(self, volume: str) -> bytes | None:
        """See :class:`TagAuthority`."""
        latest = self._tags.get(volume)
        return None if latest is None else latest[1]

    def current_version(self, volume: str) -> int | None:
        """The version of the latest accepted tag, or None."""
        latest = self._tags.get(volume)
        return None if latest is None else latest[0]

    def report_tag(self, volume: str, version: int, tag: bytes) -> None:
        """See :class:`TagAuthority`.

        Raises:
            VerificationError: ``tag_replayed`` when ``version`` is not newer than the latest.
        """
        latest = self._tags.get(volume)
        if latest is not None and version <= latest[0]:
            raise VerificationError(
                "tag_replayed",
                f"volume {volume!r}: version {version} is not newer than {latest[0]}",
            )
        self._tags[volume] = (version, bytes(tag))

    def reset_tag(self, volume: str, tag: bytes | None) -> None:
        """Set (or forget) a volume's tag: what an authorised reset does at the coordinator."""
        if tag is None:
            self._tags.pop(volume, None)
        else:
            latest = self._tags.get(volume)
            self._tags[volume] = (0 if latest is None else latest[0], bytes(tag))


class InsecureTrustOnFirstUse:
    """INSECURE: accepts whatever tag a volume has when first seen in this process.

    It keeps nothing across processes, so it cannot detect a whole-volume rollback between
    runs; it only orders commits within one process. Every use logs a warning.
    """

    def __init__(self) -> None:
        self._inner = LocalTagAuthority()

    def current_tag(self, volume: str) -> bytes | None:
        """See :class:`TagAuthority` (None for a volume not seen in this process)."""
        _logger.warning(
            "volume %r: trust-on-first-use tag authority: rollback protection is OFF", volume
        )
        return self._inner.current_tag(volume)

    def report_tag(self, volume: str, version: int, tag: bytes) -> None:
        """See :class:`TagAuthority`.

        Raises:
            VerificationError: ``tag_replayed`` for a version not newer than the last one.
        """
        self._inner.report_tag(volume, version, tag)


# -- the volume ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeEntry:
    """What :meth:`Volume.getattr` reports for one path."""

    is_dir: bool
    size: int
    mode: int
    mtime_ns: int


@dataclass(frozen=True)
class VolumeInfo:
    """A volume's committed state as recorded on disk (no secrets)."""

    name: str
    version: int
    tag: bytes
    files: dict[str, FileEntry]
    dirs: dict[str, DirEntry]
    #: Version and tag of an unfinished commit (``volume.pending.json``), if any.
    pending_version: int | None = None
    pending_tag: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (hex tags)."""
        return {
            "name": self.name,
            "version": self.version,
            "tag": self.tag.hex(),
            "files": {p: e.model_dump() for p, e in sorted(self.files.items())},
            "dirs": sorted(self.dirs),
            "pending_version": self.pending_version,
            "pending_tag": None if self.pending_tag is None else self.pending_tag.hex(),
        }


def inspect_volume(directory: str | os.PathLike[str], key: bytes) -> VolumeInfo:
    """Read and authenticate a volume's record (and pending record) without checking files.

    What an operator needs to decide on a tag reset after a detected inconsistency.

    Raises:
        ConfigError: bad key, unreadable directory, no record.
        VerificationError: ``volume_bad_record``.
    """
    root = Path(directory)
    try:
        stored = _load_record(root / RECORD_NAME, key, pending=False)
    except FileNotFoundError as exc:
        raise ConfigError(f"{root} is not a volume (no {RECORD_NAME})") from exc
    pending: VolumeRecord | None = None
    try:
        pending = _load_record(root / PENDING_NAME, key, pending=True).record
    except FileNotFoundError:
        pending = None
    except VerificationError:
        _logger.warning("volume %s: ignoring an unauthenticated %s", root, PENDING_NAME)
    record = stored.record
    return VolumeInfo(
        name=record.name,
        version=record.version,
        tag=record.tag(),
        files=dict(record.files),
        dirs=dict(record.dirs),
        pending_version=None if pending is None else pending.version,
        pending_tag=None if pending is None else pending.tag(),
    )


@dataclass(eq=False)
class _Inode:
    number: int
    object: str
    mode: int
    mtime_ns: int
    size: int
    mac: str
    new: bool  # object lives in new/ (created since the last commit)
    file: EncryptedFile | None = None
    store: JournaledNodeStore | FileNodeStore | None = None
    reader: TreeReader | None = None  # fast reads while nothing is uncommitted
    writer: AppendWriter | None = None  # fast appends to a file only ever appended to
    path: str | None = None  # None once unlinked
    dirty: bool = False


@dataclass(eq=False)
class _Dir:
    mode: int
    mtime_ns: int


@dataclass(eq=False)
class _State:
    files: dict[str, int] = field(default_factory=dict)  # path -> inode number
    dirs: dict[str, _Dir] = field(default_factory=dict)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _check_path(path: str) -> str:
    if not path.startswith("/") or "\0" in path or (path != "/" and path.endswith("/")):
        raise OSError(errno.EINVAL, f"not a normalised volume path: {path!r}")
    if "//" in path or "/./" in path + "/" or "/../" in path + "/":
        raise OSError(errno.EINVAL, f"not a normalised volume path: {path!r}")
    return path


def _enoent(path: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def _rollback(message: str) -> VerificationError:
    return VerificationError("rollback_detected", message)


class Volume:
    """An open encrypted volume: a small file system whose commits the authority orders.

    Not thread-safe (the shield calls it from one thread). Paths are volume-relative, absolute
    and normalised (``"/"``, ``"/a/b"``). File handles are inode numbers from :meth:`open_file`.
    The key is held in memory only and never shown in ``repr``.
    """

    def __init__(
        self,
        root: Path,
        key: bytes,
        stored: VolumeRecord,
        *,
        tag_authority: TagAuthority | None,
        writable: bool,
    ) -> None:
        self._root = root
        self._key = fmt.check_key(key)
        self._authority = tag_authority
        self._writable = writable
        self._record = stored
        self._tag = stored.tag()
        self._journal: Journal | None = None
        self._inodes: dict[int, _Inode] = {}
        self._state = _State()
        self._next_inode = 1
        self._deleted: list[str] = []
        self._changed = False
        self._failure: SealpodError | None = None
        self._closed = False
        self._open_lru: dict[int, None] = {}
        self._load_state(stored)

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        key: bytes,
        name: str,
        *,
        tag_authority: TagAuthority | None = None,
    ) -> Volume:
        """Create an empty volume (version 1) in ``directory`` (created, or an empty one).

        The initial tag is reported to ``tag_authority``, if given.

        Raises:
            ConfigError: bad key or name, the directory is not empty or cannot be written.
            SealpodError: the authority refuses the initial tag.
        """
        fmt.check_key(key)
        if not name or len(name) > _MAX_NAME or "/" in name or "\0" in name:
            raise ConfigError(f"volume name {name!r} must be 1-{_MAX_NAME} chars without '/'")
        root = Path(directory)
        try:
            root.mkdir(parents=True, exist_ok=True)
            if any(root.iterdir()):
                raise ConfigError(f"{root} is not empty")
            (root / OBJECTS_DIR).mkdir(mode=0o700)
            (root / NEW_DIR).mkdir(mode=0o700)
        except OSError as exc:
            raise ConfigError(f"cannot create a volume in {root}: {exc.strerror or exc}") from exc
        now = time.time_ns()
        record = VolumeRecord(
            type=RECORD_TYPE,
            format=RECORD_FORMAT,
            name=name,
            version=1,
            dirs={"/": DirEntry(mode=0o755, mtime_ns=now)},
            files={},
        )
        _write_atomic(root, RECORD_NAME, _record_document(record, key))
        if tag_authority is not None:
            tag_authority.report_tag(name, record.version, record.tag())
        _logger.info("volume %r created in %s", name, root)
        volume = cls(root, key, record, tag_authority=tag_authority, writable=True)
        volume._journal = Journal(root / JOURNAL_NAME)
        return volume

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        key: bytes,
        name: str,
        expected_tag: bytes | None = None,
        tag_authority: TagAuthority | None = None,
        *,
        writable: bool = True,
        deep: bool = False,
    ) -> Volume:
        """Open the volume in ``directory`` and verify it against the expected tag.

        The expected tag is ``expected_tag`` or else ``tag_authority.current_tag(name)``; when
        both are given they must agree. With neither, rollback of the whole directory cannot be
        detected (a warning is logged). A writable open finishes or discards an interrupted
        commit (see the module docstring); a read-only one changes nothing on disk.
        ``deep`` authenticates every node of every file (otherwise nodes are checked when read).

        Raises:
            ConfigError: bad key, not a volume, unreadable directory.
            VerificationError: ``rollback_detected`` (naming the path), ``volume_bad_record``,
                ``volume_name_mismatch``, ``volume_commit_unfinished`` (read-only open of a
                volume whose last commit must be redone), ``volume_journal_damaged``, or an
                ``encfs_*`` reason naming the file.
        """
        fmt.check_key(key)
        root = Path(directory)
        expected = expected_tag
        if tag_authority is not None:
            current = tag_authority.current_tag(name)
            if expected is not None and current is not None and current != expected:
                raise _rollback(f"volume {name!r}: the expected tag differs from the authority's")
            expected = current if current is not None else expected
        if expected is None:
            _logger.warning(
                "volume %r opened without an expected tag: whole-volume rollback is not detected",
                name,
            )
        if not root.is_dir():
            raise ConfigError(f"{root} is not a directory")
        # A writable open takes the volume's writer lock before it reads anything.
        journal = Journal(root / JOURNAL_NAME) if writable else None
        try:
            record, pending = _choose_record(root, key, name, expected, writable=writable)
            if journal is not None:
                if pending is not None:
                    _logger.warning(
                        "volume %r: finishing the interrupted commit of version %d",
                        name,
                        record.version,
                    )
                    _apply(root, journal, pending)
                else:
                    _discard(root, journal, record)
            volume = cls(root, key, record, tag_authority=tag_authority, writable=writable)
        except BaseException:
            if journal is not None:
                journal.close()
            raise
        volume._journal = journal
        try:
            volume._verify_directory(deep=deep)
        except BaseException:
            volume._release()
            raise
        return volume

    # -- properties -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The volume name (bound into every record)."""
        return self._record.name

    @property
    def version(self) -> int:
        """The version of the last commit."""
        return self._record.version

    @property
    def tag(self) -> bytes:
        """The tag of the last commit."""
        return self._tag

    @property
    def directory(self) -> Path:
        """The host directory."""
        return self._root

    @property
    def changed(self) -> bool:
        """Whether there are changes not yet committed."""
        return self._changed

    def __repr__(self) -> str:
        return f"Volume(name={self.name!r}, version={self.version}, directory={str(self._root)!r})"

    def inspect(self) -> VolumeInfo:
        """The last committed record and its tag."""
        return VolumeInfo(
            name=self.name,
            version=self.version,
            tag=self._tag,
            files=dict(self._record.files),
            dirs=dict(self._record.dirs),
        )

    # -- verification ---------------------------------------------------------------------

    def _bound(self, object_id: str) -> str:
        return f"{self.name}/{object_id}"

    def _object_path(self, inode: _Inode) -> Path:
        return self._root / (NEW_DIR if inode.new else OBJECTS_DIR) / inode.object

    def _verify_directory(self, *, deep: bool) -> None:
        objects = self._root / OBJECTS_DIR
        try:
            present = set(os.listdir(objects))
        except OSError as exc:
            raise _rollback(f"volume {self.name!r}: the objects directory is missing") from exc
        referenced = {entry.object: path for path, entry in self._record.files.items()}
        for extra in sorted(present - set(referenced)):
            raise _rollback(f"extra file {OBJECTS_DIR}/{extra} (not in the volume record)")
        for path, entry in sorted(self._record.files.items()):
            self._verify_file(path, entry, deep=deep)

    def _verify_file(self, path: str, entry: FileEntry, *, deep: bool) -> None:
        host = self._root / OBJECTS_DIR / entry.object
        try:
            length = host.stat().st_size
        except FileNotFoundError as exc:
            raise _rollback(f"{path}: missing file") from exc
        except OSError as exc:
            raise ConfigError(f"cannot stat {host}: {exc.strerror or exc}") from exc
        try:
            handle = EncryptedFile.open(
                host, self._key, path=self._bound(entry.object), cache_nodes=64
            )
        except VerificationError as exc:
            if exc.reason == "encfs_path_mismatch":
                raise _rollback(f"{path}: holds another file (moved from another path)") from exc
            raise VerificationError(exc.reason, f"{path}: {exc}") from exc
        try:
            if not hmac.compare_digest(handle.root_mac, bytes.fromhex(entry.mac)):
                raise _rollback(f"{path}: not the committed version of the file")
            if handle.size != entry.size:  # pragma: no cover - implied by the root MAC
                raise _rollback(f"{path}: size differs from the record")
            if length < fmt.host_size(entry.size):
                raise VerificationError("encfs_truncated", f"{path}: the file is truncated")
            if deep:
                offset = 0
                while offset < entry.size:
                    offset += len(handle.read(offset, 1 << 20))
        except VerificationError as exc:
            if exc.reason.startswith("encfs_"):
                raise VerificationError(exc.reason, f"{path}: {exc}") from exc
            raise
        finally:
            handle.close()

    # -- namespace ------------------------------------------------------------------------

    def _load_state(self, record: VolumeRecord) -> None:
        self._state = _State()
        self._inodes = {}
        for path, d in record.dirs.items():
            self._state.dirs[path] = _Dir(d.mode, d.mtime_ns)
        for path, f in record.files.items():
            inode = self._new_inode(f.object, f.mode, f.mtime_ns, f.size, f.mac, new=False)
            inode.path = path
            self._state.files[path] = inode.number

    def _new_inode(
        self, object_id: str, mode: int, mtime_ns: int, size: int, mac: str, *, new: bool
    ) -> _Inode:
        inode = _Inode(self._next_inode, object_id, mode, mtime_ns, size, mac, new)
        self._next_inode += 1
        self._inodes[inode.number] = inode
        return inode

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError(f"volume {self.name!r} is closed")
        if self._failure is not None:
            raise self._failure

    def _check_writable(self) -> None:
        self._check_open()
        if not self._writable:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def _touch_dir(self, path: str) -> None:
        self._state.dirs[path].mtime_ns = time.time_ns()

    def _need_dir(self, path: str) -> _Dir:
        d = self._state.dirs.get(path)
        if d is None:
            if path in self._state.files:
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            raise _enoent(path)
        return d

    def getattr(self, path: str) -> VolumeEntry:
        """The entry at ``path``.

        Raises:
            FileNotFoundError: no such entry.
            ConfigError: the volume is closed.
        """
        self._check_open()
        _check_path(path)
        d = self._state.dirs.get(path)
        if d is not None:
            return VolumeEntry(is_dir=True, size=0, mode=d.mode, mtime_ns=d.mtime_ns)
        number = self._state.files.get(path)
        if number is None:
            raise _enoent(path)
        inode = self._inodes[number]
        if inode.writer is not None:
            size = inode.writer.size
        else:
            size = inode.file.size if inode.file is not None else inode.size
        return VolumeEntry(is_dir=False, size=size, mode=inode.mode, mtime_ns=inode.mtime_ns)

    def listdir(self, path: str) -> list[str]:
        """Names in the directory at ``path``, sorted.

        Raises:
            FileNotFoundError: no such directory.
            NotADirectoryError: ``path`` is a file.
        """
        self._check_open()
        self._need_dir(_check_path(path))
        prefix = path if path == "/" else path + "/"
        names = [
            p[len(prefix) :]
            for p in (*self._state.dirs, *self._state.files)
            if p != "/" and _parent(p) == path
        ]
        return sorted(names)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """Create a directory.

        Raises:
            FileExistsError: ``path`` exists.
            FileNotFoundError: the parent does not exist.
            OSError: EROFS on a read-only volume.
        """
        self._check_writable()
        _check_path(path)
        if path in self._state.dirs or path in self._state.files:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        self._need_dir(_parent(path))
        self._state.dirs[path] = _Dir(stat.S_IMODE(mode), time.time_ns())
        self._touch_dir(_parent(path))
        self._changed = True

    def rmdir(self, path: str) -> None:
        """Remove an empty directory.

        Raises:
            FileNotFoundError: no such directory.
            NotADirectoryError: ``path`` is a file.
            OSError: ENOTEMPTY, EBUSY for "/", EROFS.
        """
        self._check_writable()
        self._need_dir(_check_path(path))
        if path == "/":
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        if self.listdir(path):
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), path)
        del self._state.dirs[path]
        self._touch_dir(_parent(path))
        self._changed = True

    def unlink(self, path: str) -> None:
        """Remove a file (open handles keep working until they are released).

        Raises:
            FileNotFoundError: no such file.
            IsADirectoryError: ``path`` is a directory.
            OSError: EROFS.
        """
        self._check_writable()
        _check_path(path)
        if path in self._state.dirs:
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        number = self._state.files.pop(path, None)
        if number is None:
            raise _enoent(path)
        self._drop_inode(self._inodes[number])
        self._touch_dir(_parent(path))
        self._changed = True

    def _drop_inode(self, inode: _Inode) -> None:
        inode.path = None
        if inode.new:
            # Never committed: nothing refers to it, remove it now.
            self._close_inode(inode)
            try:
                self._object_path(inode).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ConfigError(f"cannot remove an object: {exc.strerror or exc}") from exc
        else:
            self._deleted.append(inode.object)
        inode.dirty = False
        self._inodes.pop(inode.number, None)
        self._open_lru.pop(inode.number, None)

    def rename(self, old: str, new: str) -> None:
        """Move ``old`` to ``new`` (a file replaces a file, a directory an empty directory).

        Raises:
            FileNotFoundError: ``old`` or the new parent does not exist.
            IsADirectoryError / NotADirectoryError: file and directory mixed.
            OSError: ENOTEMPTY, EINVAL (into itself), EROFS.
        """
        self._check_writable()
        _check_path(old)
        _check_path(new)
        if old == new:
            if old not in self._state.dirs and old not in self._state.files:
                raise _enoent(old)
            return
        self._need_dir(_parent(new))
        if old in self._state.files:
            if new in self._state.dirs:
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), new)
            if new in self._state.files:
                self._drop_inode(self._inodes[self._state.files.pop(new)])
            number = self._state.files.pop(old)
            self._state.files[new] = number
            self._inodes[number].path = new
        elif old in self._state.dirs:
            if old == "/" or new.startswith(old + "/"):
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), new)
            if new in self._state.files:
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), new)
            if new in self._state.dirs:
                if self.listdir(new):
                    raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), new)
                del self._state.dirs[new]
            prefix = old + "/"
            for p in [p for p in self._state.dirs if p == old or p.startswith(prefix)]:
                self._state.dirs[new + p[len(old) :]] = self._state.dirs.pop(p)
            for p in [p for p in self._state.files if p.startswith(prefix)]:
                number = self._state.files.pop(p)
                self._state.files[new + p[len(old) :]] = number
                self._inodes[number].path = new + p[len(old) :]
        else:
            raise _enoent(old)
        self._touch_dir(_parent(old))
        self._touch_dir(_parent(new))
        self._changed = True

    # -- file contents --------------------------------------------------------------------

    def open_file(
        self,
        path: str,
        *,
        create: bool = False,
        exclusive: bool = False,
        truncate: bool = False,
        mode: int = 0o644,
    ) -> int:
        """Open (or create) the file at ``path``; return its handle (an inode number).

        Raises:
            FileNotFoundError: no such file and not ``create`` (or no parent directory).
            FileExistsError: ``create`` and ``exclusive`` on an existing file.
            IsADirectoryError: ``path`` is a directory.
            OSError: EROFS on a read-only volume.
            VerificationError: the file fails a check.
        """
        self._check_open()
        _check_path(path)
        if path in self._state.dirs:
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        number = self._state.files.get(path)
        if number is None:
            if not create:
                raise _enoent(path)
            self._check_writable()
            self._need_dir(_parent(path))
            inode = self._create_object(stat.S_IMODE(mode))
            inode.path = path
            self._state.files[path] = inode.number
            self._touch_dir(_parent(path))
            return inode.number
        if create and exclusive:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        if truncate:
            self.truncate(path, 0)
        return number

    def _create_object(self, mode: int) -> _Inode:
        inode = self._new_inode("", mode, time.time_ns(), 0, "", new=True)
        try:
            self._fresh_object(inode)
        except BaseException:
            self._inodes.pop(inode.number, None)
            raise
        return inode

    def _fresh_object(self, inode: _Inode) -> None:
        """Give ``inode`` a new, empty object in ``new/``."""
        if self._journal is None:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        inode.object, inode.new, inode.size, inode.mac = os.urandom(16).hex(), True, 0, ""
        host = self._object_path(inode)
        fd = _open_object(host, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        try:
            store = JournaledNodeStore(
                fd, bytes.fromhex(inode.object), self._journal, committed_length=0, name=str(host)
            )
            # Appends go through the append writer until something else happens to the file.
            inode.writer = AppendWriter(store, self._key, path=self._bound(inode.object))
        except BaseException:
            os.close(fd)
            raise
        inode.file, inode.store = None, store
        inode.dirty = True
        self._changed = True
        self._remember_open(inode)

    def _attach(self, inode: _Inode, fd: int, *, create: bool) -> EncryptedFile:
        if self._journal is None:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        try:
            committed = 0 if inode.new else os.fstat(fd).st_size
            store = JournaledNodeStore(
                fd,
                bytes.fromhex(inode.object),
                self._journal,
                committed_length=committed,
                name=str(self._object_path(inode)),
            )
            handle = EncryptedFile(
                store,
                self._key,
                path=self._bound(inode.object),
                create=create,
                writable=True,
                cache_nodes=_CACHE_NODES,
                expected_root_mac=None if create else bytes.fromhex(inode.mac),
                owned_fd=fd,
            )
        except BaseException:
            os.close(fd)
            raise
        inode.file, inode.store = handle, store
        self._remember_open(inode)
        return handle

    def _remember_open(self, inode: _Inode) -> None:
        self._open_lru.pop(inode.number, None)
        self._open_lru[inode.number] = None
        if len(self._open_lru) <= _OPEN_FILES:
            return
        for number in list(self._open_lru):
            if len(self._open_lru) <= _OPEN_FILES:
                break
            other = self._inodes.get(number)
            if other is None or other.dirty or other.new:
                continue  # keep handles with uncommitted writes until the commit
            self._close_inode(other)
            self._open_lru.pop(number, None)

    def _close_inode(self, inode: _Inode) -> None:
        inode.reader = None
        if inode.file is not None:
            inode.file._release()  # drop without committing: the volume commit flushes
        elif inode.writer is not None and inode.store is not None:
            os.close(inode.store.fd)
        inode.file, inode.store, inode.writer = None, None, None

    def _end_append(self, inode: _Inode) -> EncryptedFile:
        """Seal what the append writer wrote and continue with a random-access handle."""
        writer, store = inode.writer, inode.store
        if writer is None or store is None:  # pragma: no cover - callers check
            raise ConfigError("no append writer to end")
        # Flushing an unchanged file again would re-seal its metadata: keep the committed one.
        mac = writer.flush() if writer.dirty else bytes.fromhex(inode.mac)
        try:
            handle = EncryptedFile(
                store,
                self._key,
                path=self._bound(inode.object),
                writable=True,
                cache_nodes=_CACHE_NODES,
                expected_root_mac=mac,
                owned_fd=store.fd,
            )
        except BaseException:
            self._close_inode(inode)
            raise
        inode.file, inode.writer = handle, None
        return handle

    def _file(self, number: int) -> EncryptedFile:
        self._check_open()
        inode = self._inodes.get(number)
        if inode is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if inode.file is not None:
            self._open_lru.pop(number, None)
            self._open_lru[number] = None
            return inode.file
        if inode.writer is not None:
            return self._end_append(inode)
        host = self._object_path(inode)
        if self._writable:
            fd = _open_object(host, os.O_RDWR)
            try:
                return self._attach(inode, fd, create=False)
            except VerificationError as exc:
                raise _rollback_from(exc, inode) from exc
        fd = _open_object(host, os.O_RDONLY)
        store = FileNodeStore(fd, name=str(host))
        try:
            handle = EncryptedFile(
                store,
                self._key,
                path=self._bound(inode.object),
                cache_nodes=_CACHE_NODES,
                expected_root_mac=bytes.fromhex(inode.mac),
                owned_fd=fd,
            )
        except VerificationError as exc:
            os.close(fd)
            raise _rollback_from(exc, inode) from exc
        except BaseException:
            os.close(fd)
            raise
        inode.file, inode.store = handle, store
        self._remember_open(inode)
        return handle

    def read(self, handle: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` of the open file ``handle``.

        Raises:
            OSError: EBADF for an unknown handle.
            VerificationError: a node fails authentication.
        """
        handle_file = self._file(handle)
        inode = self._inodes[handle]
        try:
            if inode.dirty or inode.store is None:
                return handle_file.read(offset, size)
            reader = inode.reader
            if reader is None:
                reader = inode.reader = TreeReader(
                    inode.store,
                    self._key,
                    path=os.fsencode(self._bound(inode.object)),
                    expected_root_mac=bytes.fromhex(inode.mac),
                )
            return reader.read(offset, size)
        except VerificationError as exc:
            raise _rollback_from(exc, inode) from exc

    def write(self, handle: int, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at ``offset`` (extending with zeros); return the count written.

        Raises:
            OSError: EBADF, EROFS.
            VerificationError: a node that must be updated fails authentication.
        """
        self._check_writable()
        inode = self._inodes.get(handle)
        if inode is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        writer = inode.writer
        if writer is not None and offset >= writer.size:
            _append_zeros(writer, offset - writer.size)
            writer.append(data)
            written = len(data)
        else:
            written = self._file(handle).write(offset, data)
        inode.mtime_ns = time.time_ns()
        inode.dirty, inode.reader = True, None
        self._changed = True
        return written

    def resize(self, handle: int, size: int) -> None:
        """Set the size of the open file ``handle``.

        Raises:
            OSError: EBADF, EROFS, EINVAL for a negative size.
            VerificationError: the new last node fails authentication.
        """
        self._check_writable()
        if size < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        inode = self._inodes.get(handle)
        if inode is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if size == 0 and not inode.new:
            # Copy on write: a file cut to nothing gets a fresh object; the old one is removed
            # at the commit, so rewriting a file never goes through the journal.
            self._close_inode(inode)
            self._deleted.append(inode.object)
            self._fresh_object(inode)
        elif inode.writer is not None and size >= inode.writer.size:
            _append_zeros(inode.writer, size - inode.writer.size)
        elif inode.writer is not None and size == 0 and inode.store is not None:
            inode.store.truncate(0)
            inode.writer = AppendWriter(inode.store, self._key, path=self._bound(inode.object))
        else:
            self._file(handle).truncate(size)
        inode.mtime_ns = time.time_ns()
        inode.dirty, inode.reader = True, None
        self._changed = True

    def truncate(self, path: str, size: int) -> None:
        """Set the size of the file at ``path``.

        Raises:
            FileNotFoundError: no such file.
            IsADirectoryError: ``path`` is a directory.
            OSError: EROFS, EINVAL.
            VerificationError: the new last node fails authentication.
        """
        _check_path(path)
        if path in self._state.dirs:
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        number = self._state.files.get(path)
        if number is None:
            raise _enoent(path)
        self.resize(number, size)

    def read_file(self, path: str) -> bytes:
        """The whole content of the file at ``path``.

        Raises:
            FileNotFoundError: no such file.
            VerificationError: a node fails authentication.
        """
        handle = self.open_file(path)
        size = self.getattr(path).size
        return self.read(handle, 0, size)

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        """Replace the content of the file at ``path`` (creating it); not committed yet.

        Raises:
            FileNotFoundError: the parent directory does not exist.
            OSError: EROFS.
        """
        handle = self.open_file(path, create=True, truncate=True, mode=mode)
        self.write(handle, 0, data)

    def iter_files(self) -> Iterator[str]:
        """Every regular file path, sorted."""
        return iter(sorted(self._state.files))

    # -- commit ---------------------------------------------------------------------------

    def commit(self) -> bytes:
        """Make every change durable and have the authority accept the new tag; return it.

        Nothing to commit returns the current tag. See the module docstring for the order and
        what a crash at each point leaves. If the authority refuses (or cannot be reached), the
        commit does not count and the volume refuses further use; reopening it decides from the
        authority's tag.

        Raises:
            ConfigError: I/O failure.
            SealpodError: the authority refused the tag (the volume is then failed).
        """
        self._check_open()
        if not self._changed:
            return self._tag
        self._check_writable()
        journal = self._journal
        if journal is None:  # pragma: no cover - writable volumes have a journal
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        files: dict[str, FileEntry] = {}
        for path, number in self._state.files.items():
            inode = self._inodes[number]
            if inode.writer is not None and inode.dirty:
                inode.reader = None
                inode.mac = inode.writer.flush().hex()
                inode.size = inode.writer.size
            elif inode.file is not None and inode.dirty:
                inode.reader = None
                mac = inode.file.flush()
                inode.size, inode.mac = inode.file.size, mac.hex()
            files[path] = FileEntry(
                object=inode.object,
                size=inode.size,
                mac=inode.mac,
                mode=inode.mode,
                mtime_ns=inode.mtime_ns,
            )
        dirs = {p: DirEntry(mode=d.mode, mtime_ns=d.mtime_ns) for p, d in self._state.dirs.items()}
        journal.sync()
        for inode in self._inodes.values():
            if isinstance(inode.store, JournaledNodeStore):
                inode.store.sync_direct()
        _fsync_dir(self._root / NEW_DIR)
        referenced = {f.object for f in files.values()}
        deleted = tuple(sorted({d for d in self._deleted if d not in referenced}))
        record = VolumeRecord(
            type=RECORD_TYPE,
            format=RECORD_FORMAT,
            name=self.name,
            version=self.version + 1,
            dirs=dirs,
            files=files,
        )
        stored = _Stored(record, journal.length, deleted)
        _write_atomic(
            self._root,
            PENDING_NAME,
            _record_document(record, self._key, journal_length=journal.length, deleted=deleted),
        )
        tag = record.tag()
        if self._authority is not None:
            try:
                self._authority.report_tag(self.name, record.version, tag)
            except SealpodError as exc:
                self._failure = exc
                _logger.error(
                    "volume %r: the commit of version %d was refused: %s",
                    self.name,
                    record.version,
                    exc,
                )
                raise
            except Exception as exc:
                failure = VerificationError(
                    "tag_report_failed", f"volume {self.name!r}: reporting the tag failed"
                )
                self._failure = failure
                raise failure from exc
        try:
            _apply(self._root, journal, stored)
        except BaseException as exc:
            # The authority holds the new tag: reopening redoes the apply.
            self._failure = ConfigError(f"volume {self.name!r}: applying the commit failed")
            raise self._failure from exc
        for inode in self._inodes.values():
            if isinstance(inode.store, JournaledNodeStore):
                inode.store.mark_committed()
            inode.new = False
            inode.dirty = False
        self._deleted = []
        self._record, self._tag = record, tag
        self._changed = False
        _logger.debug("volume %r: committed version %d", self.name, record.version)
        return tag

    def _release(self) -> None:
        for inode in self._inodes.values():
            self._close_inode(inode)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self._closed = True

    def close(self) -> None:
        """Commit (if writable and not failed) and release everything. Idempotent.

        Raises:
            ConfigError: I/O failure while committing.
            SealpodError: the authority refused the final commit.
        """
        if self._closed:
            return
        try:
            if self._writable and self._failure is None:
                self.commit()
        finally:
            self._release()

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._release()


def _choose_record(
    root: Path, key: bytes, name: str, expected: bytes | None, *, writable: bool
) -> tuple[VolumeRecord, _Stored | None]:
    """The record that matches the expected tag, and the pending commit to redo (if any).

    Raises:
        VerificationError: see :meth:`Volume.open`.
    """
    try:
        committed = _load_record(root / RECORD_NAME, key, pending=False).record
    except FileNotFoundError as exc:
        raise _rollback(f"volume {name!r}: the volume record is missing") from exc
    if committed.name != name:
        raise VerificationError(
            "volume_name_mismatch", f"{root} holds volume {committed.name!r}, not {name!r}"
        )
    pending: _Stored | None
    try:
        pending = _load_record(root / PENDING_NAME, key, pending=True)
    except FileNotFoundError:
        pending = None
    except VerificationError:
        _logger.warning("volume %r: ignoring an unauthenticated pending record", name)
        pending = None
    if pending is not None and pending.record.name != name:
        pending = None
    if expected is None or hmac.compare_digest(expected, committed.tag()):
        return committed, None
    if pending is not None and hmac.compare_digest(expected, pending.record.tag()):
        if not writable:
            raise VerificationError(
                "volume_commit_unfinished",
                f"volume {name!r}: its last commit (version {pending.record.version}) "
                "must be finished by a writable open",
            )
        return pending.record, pending
    raise _rollback(
        f"volume {name!r}: the record on disk (version {committed.version}) is not "
        "the latest committed state"
    )


def _append_zeros(writer: AppendWriter, count: int) -> None:
    block = bytes(min(count, 1 << 20))
    while count > 0:
        writer.append(block[: min(count, len(block))])
        count -= len(block)


def _rollback_from(exc: VerificationError, inode: _Inode) -> VerificationError:
    where = inode.path or f"{OBJECTS_DIR}/{inode.object}"
    if exc.reason in ("encfs_root_mac_mismatch", "encfs_path_mismatch"):
        return _rollback(f"{where}: not the committed version of the file")
    return VerificationError(exc.reason, f"{where}: {exc}")


def _open_object(host: Path, flags: int) -> int:
    try:
        return os.open(host, flags | os.O_CLOEXEC, 0o600)
    except FileNotFoundError as exc:
        raise _rollback(f"{host.parent.name}/{host.name}: missing file") from exc
    except OSError as exc:
        raise ConfigError(f"cannot open {host}: {exc.strerror or exc}") from exc


def _apply(root: Path, journal: Journal, pending: _Stored) -> None:
    """Steps 5 and 6 of a commit; idempotent, so also the redo after a crash."""
    objects, new = root / OBJECTS_DIR, root / NEW_DIR
    fds: dict[bytes, int] = {}
    deleted = {bytes.fromhex(d) for d in pending.deleted}
    try:
        for object_id, node, image in journal.entries(pending.journal_length):
            if object_id in deleted:
                continue  # removed below (and maybe already, by an interrupted apply)
            fd = fds.get(object_id)
            if fd is None:
                fd = fds[object_id] = _open_object(objects / object_id.hex(), os.O_RDWR)
            pwrite_all(fd, image, node * fmt.NODE_SIZE, object_id.hex())
        for entry in pending.record.files.values():
            source = new / entry.object
            target = objects / entry.object
            if source.exists():
                try:
                    os.replace(source, target)
                except OSError as exc:
                    raise ConfigError(f"cannot move {source}: {exc.strerror or exc}") from exc
            raw_id = bytes.fromhex(entry.object)
            fd = fds.get(raw_id)
            if fd is None:
                fd = fds[raw_id] = _open_object(target, os.O_RDWR)
            if os.fstat(fd).st_size > fmt.host_size(entry.size):
                os.ftruncate(fd, fmt.host_size(entry.size))
        for fd in fds.values():
            fsync(fd, "volume object")
    finally:
        for fd in fds.values():
            os.close(fd)
    for gone in pending.deleted:
        try:
            (objects / gone).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ConfigError(f"cannot remove object {gone}: {exc.strerror or exc}") from exc
    _fsync_dir(objects)
    _fsync_dir(new)
    try:
        os.replace(root / PENDING_NAME, root / RECORD_NAME)
    except OSError as exc:
        raise ConfigError(f"cannot commit {root / RECORD_NAME}: {exc.strerror or exc}") from exc
    _fsync_dir(root)
    journal.reset()


def _discard(root: Path, journal: Journal, record: VolumeRecord) -> None:
    """Drop every trace of commits that never counted; ``record`` stays the committed state."""
    journal.reset()
    (root / PENDING_NAME).unlink(missing_ok=True)
    for name in (RECORD_NAME, PENDING_NAME):
        (root / f".{name}.tmp").unlink(missing_ok=True)  # a torn atomic write
    new = root / NEW_DIR
    try:
        leftovers = os.listdir(new)
    except FileNotFoundError:
        new.mkdir(mode=0o700)
        leftovers = []
    for name in leftovers:
        (new / name).unlink(missing_ok=True)
    for entry in record.files.values():
        host = root / OBJECTS_DIR / entry.object
        try:
            # Nodes appended past the committed end by an uncommitted session.
            if host.stat().st_size > fmt.host_size(entry.size):
                os.truncate(host, fmt.host_size(entry.size))
        except FileNotFoundError:
            continue  # reported by the verification
    _fsync_dir(new)
