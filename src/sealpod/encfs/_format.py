"""The on-disk format of Gramine encrypted files (protected files, format version 2.0).

Facts, not code, carried over from Gramine's ``common/src/protected_files/`` (LGPL) and confirmed
against the vectors in ``../shared/encrypted-files-vectors`` (written by ``gramine-sgx-pf-crypt``):

* The host file is a sequence of 4096-byte nodes.
* Node 0 is the metadata node: a plaintext header (:data:`HEADER_FIELDS`), an AES-128-GCM
  encrypted record (:data:`RECORD_FIELDS`: bound path, plaintext size, root MHT key and tag, the
  first 3072 bytes of plaintext) and zero padding. The record key is derived from the user's
  16-byte key and the header's nonce (:func:`derive_metadata_key`).
* Node 1 is the root MHT (Merkle hash tree) node, present when the plaintext is longer than 3072
  bytes. An MHT node holds 96 ``key || tag`` entries for its data nodes and then 32 for its child
  MHT nodes.
* Every node is sealed with AES-128-GCM under its own fresh random key, a zero IV and no AAD; the
  key and tag live in the parent (the metadata record for the root MHT). A zero IV is safe only
  because every (re-)encryption draws a new key: writers must never reuse one.
* Physical order: metadata, root MHT, its 96 data nodes, MHT #1, its 96 data nodes, ... (see
  :func:`data_node_physical` and :func:`mht_node_physical`).
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.cmac import CMAC

from sealpod.errors import ConfigError, VerificationError

_logger = logging.getLogger(__name__)

NODE_SIZE: Final = 4096
KEY_SIZE: Final = 16
TAG_SIZE: Final = 16
NONCE_SIZE: Final = 32
#: Plaintext bytes kept inside the metadata node (``MD_USER_DATA_SIZE`` upstream).
METADATA_DATA_SIZE: Final = 3072
#: Data-node entries per MHT node, then child-MHT entries (``ATTACHED_DATA_NODES_COUNT``, ...).
DATA_ENTRIES_PER_MHT: Final = 96
CHILD_ENTRIES_PER_MHT: Final = 32
ENTRY_SIZE: Final = KEY_SIZE + TAG_SIZE
#: The bound-path field is 772 bytes and NUL-terminated, so at most 771 path bytes.
PATH_FIELD_SIZE: Final = 772
MAX_PATH_BYTES: Final = PATH_FIELD_SIZE - 1

FILE_ID: Final = 0x46505F5346415247  # b"GRAFS_PF" little-endian
FILE_ID_BYTES: Final = FILE_ID.to_bytes(8, "little")
MAJOR_VERSION: Final = 2
MINOR_VERSION: Final = 0
_FLAG_PENDING_WRITE: Final = 0x01
#: Major version 1 has no feature-flags byte: its encrypted record starts one byte earlier.
LEGACY_MAJOR_VERSION: Final = 1

ZERO_IV: Final = bytes(12)
ZERO_KEY: Final = bytes(KEY_SIZE)
ZERO_TAG: Final = bytes(TAG_SIZE)

# Field tables: (name, offset, size). The metadata node of format 2.0.
HEADER_FIELDS: Final = (
    ("file_id", 0, 8),
    ("major_version", 8, 1),
    ("minor_version", 9, 1),
    ("metadata_key_nonce", 10, NONCE_SIZE),
    ("metadata_tag", 42, TAG_SIZE),
    ("feature_flags", 58, 1),
)
HEADER_SIZE: Final = 59
_HEADER = struct.Struct("<QBB32s16sB")

# The encrypted record, offsets relative to its start (file offset 59 in format 2.0).
RECORD_FIELDS: Final = (
    ("file_path", 0, PATH_FIELD_SIZE),
    ("file_size", 772, 8),
    ("root_mht_key", 780, KEY_SIZE),
    ("root_mht_tag", 796, TAG_SIZE),
    ("file_data", 812, METADATA_DATA_SIZE),
)
RECORD_SIZE: Final = 3884
_RECORD_HEAD = struct.Struct("<772sQ16s16s")
PADDING_SIZE: Final = NODE_SIZE - HEADER_SIZE - RECORD_SIZE  # 153

# NIST SP 800-108 counter-mode KDF, one AES-CMAC block: u32 counter (1) || label, NUL-padded
# to 64 bytes || nonce || u32 output length in bits (128). Little-endian, as upstream packs it.
_KDF_LABEL: Final = b"SGX-PROTECTED-FS-METADATA-KEY".ljust(64, b"\0")
_KDF_PREFIX: Final = struct.pack("<I", 1) + _KDF_LABEL
_KDF_SUFFIX: Final = struct.pack("<I", 128)

if _HEADER.size != HEADER_SIZE or _RECORD_HEAD.size + METADATA_DATA_SIZE != RECORD_SIZE:
    raise ImportError("encfs format constants are inconsistent")  # pragma: no cover


def check_key(key: bytes) -> bytes:
    """Return ``key`` as bytes if it is a 16-byte AES-128 key.

    Raises:
        ConfigError: wrong type or length (the key itself never appears in the message).
    """
    if not isinstance(key, bytes | bytearray | memoryview):
        raise ConfigError("encryption key must be bytes")
    raw = bytes(key)
    if len(raw) != KEY_SIZE:
        raise ConfigError(f"encryption key must be {KEY_SIZE} bytes, got {len(raw)}")
    return raw


def encode_path(path: str | bytes) -> bytes:
    """The bytes stored as the bound path (``str`` via the filesystem encoding, like a path).

    Raises:
        ConfigError: the path is empty, contains NUL or is longer than 771 bytes.
    """
    raw = os.fsencode(path)
    if not raw:
        raise ConfigError("bound path must not be empty")
    if b"\0" in raw:
        raise ConfigError("bound path must not contain NUL")
    if len(raw) > MAX_PATH_BYTES:
        raise ConfigError(f"bound path is {len(raw)} bytes; at most {MAX_PATH_BYTES} fit")
    return raw


def normalize_path(path: str) -> str:
    """Normalise a path the way ``gramine-sgx-pf-crypt`` does before binding it.

    ``.`` and empty components vanish, ``..`` removes the previous component (``/..`` is ``/``;
    a leading ``..`` of a relative path stays), a relative path stays relative and a trailing
    ``/`` is dropped. Unlike :func:`os.path.normpath`, ``//x`` becomes ``/x`` and ``.`` becomes
    the empty string.
    """
    absolute = path.startswith("/")
    kept: list[str] = []
    leading_up: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if kept:
                kept.pop()
            elif not absolute:
                leading_up.append(part)
            continue
        kept.append(part)
    joined = "/".join(leading_up + kept)
    return "/" + joined if absolute else joined


def derive_metadata_key(user_key: bytes, nonce: bytes) -> bytes:
    """AES-CMAC(user_key, 1 || label || nonce || 128): the metadata record's AES-GCM key."""
    cmac = CMAC(algorithms.AES(user_key))
    cmac.update(_KDF_PREFIX + nonce + _KDF_SUFFIX)
    return cmac.finalize()


# -- geometry ------------------------------------------------------------------------------


def data_node_count(size: int) -> int:
    """Number of data nodes a plaintext of ``size`` bytes needs."""
    if size <= METADATA_DATA_SIZE:
        return 0
    return -(-(size - METADATA_DATA_SIZE) // NODE_SIZE)


def mht_node_count(size: int) -> int:
    """Number of MHT nodes (root included) a plaintext of ``size`` bytes needs."""
    return -(-data_node_count(size) // DATA_ENTRIES_PER_MHT)


def host_node_count(size: int) -> int:
    """Number of 4096-byte nodes in the host file for a plaintext of ``size`` bytes."""
    return 1 + data_node_count(size) + mht_node_count(size)


def host_size(size: int) -> int:
    """Host (ciphertext) file size in bytes for a plaintext of ``size`` bytes."""
    return NODE_SIZE * host_node_count(size)


def data_node_physical(index: int) -> int:
    """Physical node number of data node ``index`` (0-based)."""
    return index + 2 + index // DATA_ENTRIES_PER_MHT


def mht_node_physical(index: int) -> int:
    """Physical node number of MHT node ``index`` (0 = root, at node 1)."""
    return 1 + index * (1 + DATA_ENTRIES_PER_MHT)


def data_node_start(index: int) -> int:
    """Plaintext offset of the first byte of data node ``index``."""
    return METADATA_DATA_SIZE + index * NODE_SIZE


def mht_node_start(index: int) -> int:
    """Plaintext offset of the first byte covered by MHT node ``index``."""
    return METADATA_DATA_SIZE + index * DATA_ENTRIES_PER_MHT * NODE_SIZE


def mht_parent(index: int) -> tuple[int, int]:
    """(parent MHT index, byte offset of the entry in the parent) of MHT node ``index`` >= 1."""
    slot = (index - 1) % CHILD_ENTRIES_PER_MHT
    return (index - 1) // CHILD_ENTRIES_PER_MHT, (DATA_ENTRIES_PER_MHT + slot) * ENTRY_SIZE


def data_parent(index: int) -> tuple[int, int]:
    """(MHT index, byte offset of the entry in it) of data node ``index``."""
    return index // DATA_ENTRIES_PER_MHT, (index % DATA_ENTRIES_PER_MHT) * ENTRY_SIZE


# -- metadata node -------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Metadata:
    """The authenticated content of a metadata node (secret: no repr)."""

    path: bytes
    size: int
    root_key: bytes
    root_tag: bytes
    data: bytes
    #: The header's GCM tag: it authenticates the record, which holds the root MHT's key and
    #: tag, so it covers the whole tree (the file's "root MAC").
    tag: bytes
    major_version: int
    minor_version: int
    flags: int

    def __repr__(self) -> str:
        return f"Metadata(size={self.size}, version={self.major_version}.{self.minor_version})"


def check_host_length(length: int) -> None:
    """Refuse a host file that is not a whole, non-zero number of nodes.

    Raises:
        VerificationError: ``encfs_truncated``.
    """
    if length < NODE_SIZE:
        raise VerificationError(
            "encfs_truncated", f"file is {length} bytes, shorter than one {NODE_SIZE}-byte node"
        )
    if length % NODE_SIZE:
        raise VerificationError(
            "encfs_truncated",
            f"file is {length} bytes, not a whole number of {NODE_SIZE}-byte nodes",
        )


def open_metadata(
    node: bytes, user_key: bytes, expected_path: bytes | None, host_length: int
) -> Metadata:
    """Check and decrypt a metadata node.

    ``expected_path`` None skips the path binding check (``gramine-sgx-pf-crypt decrypt``
    without ``-V``); the embedded path is still authenticated and returned.

    Raises:
        VerificationError: ``encfs_bad_header`` (not an encrypted file),
            ``encfs_unsupported_version``, ``encfs_bad_mac`` (wrong key or modified metadata),
            ``encfs_bad_metadata``, ``encfs_path_mismatch``, ``encfs_truncated`` (the host file
            has fewer nodes than the authenticated size needs).
    """
    check_host_length(host_length)
    if len(node) != NODE_SIZE:
        raise VerificationError("encfs_truncated", "metadata node is incomplete")
    file_id, major, minor, nonce, tag, flags = _HEADER.unpack_from(node)
    if file_id != FILE_ID:
        raise VerificationError("encfs_bad_header", "not a Gramine encrypted file (bad file id)")
    if major == MAJOR_VERSION:
        start = HEADER_SIZE
    elif major == LEGACY_MAJOR_VERSION:
        # Format 1.x: no feature-flags byte; upstream readers migrate it by shifting.
        start, flags = HEADER_SIZE - 1, 0
    else:
        raise VerificationError(
            "encfs_unsupported_version",
            f"format version {major}.{minor} is not supported (expected {MAJOR_VERSION}.x)",
        )
    key = derive_metadata_key(user_key, nonce)
    sealed = node[start : start + RECORD_SIZE] + tag
    try:
        record = AESGCM(key).decrypt(ZERO_IV, sealed, None)
    except InvalidTag:
        raise VerificationError(
            "encfs_bad_mac", "metadata node failed authentication (wrong key or modified file)"
        ) from None
    raw_path, size, root_key, root_tag = _RECORD_HEAD.unpack_from(record)
    end = raw_path.find(b"\0")
    if end < 0:
        raise VerificationError("encfs_bad_metadata", "bound path is not NUL-terminated")
    path = raw_path[:end]
    if expected_path is not None and path != expected_path:
        raise VerificationError(
            "encfs_path_mismatch",
            f"file is bound to {os.fsdecode(path)!r}, opened as {os.fsdecode(expected_path)!r}",
        )
    if flags & _FLAG_PENDING_WRITE:
        # Gramine sets it while a write with a recovery journal is in flight; like
        # gramine-sgx-pf-crypt we read the committed state (it is authenticated either way).
        _logger.warning("encrypted file has the pending-write flag set; reading it as is")
    needed = host_node_count(size)
    available = host_length // NODE_SIZE
    if needed > available:
        raise VerificationError(
            "encfs_truncated",
            f"plaintext size {size} needs {needed} nodes, file has {available}",
        )
    return Metadata(
        path=path,
        size=size,
        root_key=root_key,
        root_tag=root_tag,
        data=record[_RECORD_HEAD.size :],
        tag=tag,
        major_version=major,
        minor_version=minor,
        flags=flags,
    )


def seal_metadata(
    user_key: bytes, path: bytes, size: int, root_key: bytes, root_tag: bytes, data: bytes
) -> tuple[bytes, bytes]:
    """Build a format-2.0 metadata node with a fresh nonce; returns (node, tag)."""
    nonce = os.urandom(NONCE_SIZE)
    key = derive_metadata_key(user_key, nonce)
    record = _RECORD_HEAD.pack(path, size, root_key, root_tag) + data
    sealed = AESGCM(key).encrypt(ZERO_IV, record, None)
    tag = sealed[RECORD_SIZE:]
    header = _HEADER.pack(FILE_ID, MAJOR_VERSION, MINOR_VERSION, nonce, tag, 0)
    return header + sealed[:RECORD_SIZE] + bytes(PADDING_SIZE), tag
