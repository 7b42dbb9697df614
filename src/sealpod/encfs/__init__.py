"""Gramine-compatible encrypted files (the protected-files format 2.0 of ``gramine-sgx-pf-crypt``).

* :class:`EncryptedFile`: random-access reads and writes, truncation, flush, and the root MAC
  that covers the whole Merkle tree.
* :func:`encrypt_bytes` / :func:`decrypt_bytes`: whole files in memory.
* :func:`encrypt_file` / :func:`decrypt_file` / :func:`verify_file`: whole files on disk,
  streamed in large blocks and written atomically.

Every failed check raises :class:`~sealpod.errors.VerificationError` with one of these stable
reasons: ``encfs_bad_header`` (not an encrypted file), ``encfs_unsupported_version``,
``encfs_bad_mac`` (wrong key, or a modified metadata, MHT or data node), ``encfs_bad_metadata``,
``encfs_path_mismatch`` (bound to another path), ``encfs_truncated`` (missing nodes or a partial
node), ``encfs_root_mac_mismatch`` (not the expected version of the file).
"""

from sealpod.encfs._format import (
    KEY_SIZE,
    MAX_PATH_BYTES,
    NODE_SIZE,
    host_size,
    normalize_path,
)
from sealpod.encfs._store import FileNodeStore, MemoryNodeStore, NodeStore
from sealpod.encfs.file import EncryptedFile, memory_file
from sealpod.encfs.stream import (
    EncryptedFileInfo,
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_file,
    verify_file,
)

__all__ = [
    "KEY_SIZE",
    "MAX_PATH_BYTES",
    "NODE_SIZE",
    "EncryptedFile",
    "EncryptedFileInfo",
    "FileNodeStore",
    "MemoryNodeStore",
    "NodeStore",
    "decrypt_bytes",
    "decrypt_file",
    "encrypt_bytes",
    "encrypt_file",
    "host_size",
    "memory_file",
    "normalize_path",
    "verify_file",
]
