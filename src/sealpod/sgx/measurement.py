"""The SGX enclave measurement (MRENCLAVE) as the CPU computes it while an enclave is built.

Intel SDM Vol. 3D, 38.7 and the ECREATE / EADD / EEXTEND operation sections: MRENCLAVE is one
SHA-256 stream over 64-byte records, finalised by EINIT:

* ECREATE: ``"ECREATE\\0"`` | SECS.SSAFRAMESIZE (u32, pages) | SECS.SIZE (u64) | 44 zero bytes;
* EADD (one per page): ``"EADD\\0\\0\\0\\0"`` | page offset in the enclave (u64) |
  SECINFO.FLAGS (u64) | 40 zero bytes;
* EEXTEND (one per measured 256-byte chunk): ``"EEXTEND\\0"`` | chunk offset (u64) | 48 zero
  bytes, followed by the 256 bytes of the chunk.

All integers are little-endian and offsets are relative to the enclave base. A page added with
``measure=False`` contributes its EADD record only (its contents are not measured), which is how
Gramine adds the heap.

This module is only the primitive: what goes into which page (the enclave layout) is decided by
the package builder.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import struct
from typing import Final

_logger = logging.getLogger(__name__)

PAGE_SIZE: Final = 4096
#: EEXTEND measures 256 bytes at a time.
EEXTEND_CHUNK_SIZE: Final = 256

_ECREATE = struct.Struct("<8sIQ44x")
_EADD = struct.Struct("<8sQQ40x")
_EEXTEND = struct.Struct("<8sQ48x")


class SecinfoFlags(enum.IntFlag):
    """SECINFO.FLAGS (SDM Table 38-8): permissions in bits 0..2, page type in bits 8..15."""

    R = 0x1
    W = 0x2
    X = 0x4
    PT_TCS = 0x100  # page type 1
    PT_REG = 0x200  # page type 2


#: The page types EADD accepts.
_PAGE_TYPE_MASK: Final = 0xFF00
_ALLOWED_TYPES: Final = (SecinfoFlags.PT_REG, SecinfoFlags.PT_TCS)
_PERMISSIONS: Final = SecinfoFlags.R | SecinfoFlags.W | SecinfoFlags.X


def _check_flags(flags: int) -> None:
    if flags & ~(_PAGE_TYPE_MASK | _PERMISSIONS):
        raise ValueError(f"SECINFO flags {flags:#x}: only R, W, X and a page type may be set")
    if flags & _PAGE_TYPE_MASK not in _ALLOWED_TYPES:
        raise ValueError(f"SECINFO flags {flags:#x}: page type must be PT_REG or PT_TCS")
    if flags & SecinfoFlags.W and not flags & SecinfoFlags.R:
        # EADD faults on write-only pages (SDM, EADD operation).
        raise ValueError(f"SECINFO flags {flags:#x}: W without R is not allowed")


class EnclaveMeasurement:
    """A running MRENCLAVE: call :meth:`ecreate` once, then :meth:`add_page` per page.

    The order of calls is part of the measurement, exactly as on the CPU. Misuse (a second
    ECREATE, a page outside the enclave or added twice, a non-page-sized page) raises
    :class:`ValueError`.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._size: int | None = None
        self._added: set[int] = set()

    @property
    def size(self) -> int | None:
        """SECS.SIZE given to :meth:`ecreate` (``None`` before it)."""
        return self._size

    @property
    def pages_added(self) -> int:
        """How many pages have been added so far."""
        return len(self._added)

    def ecreate(self, size: int, ssa_frame_size: int) -> None:
        """Start the measurement of an enclave of ``size`` bytes.

        Args:
            size: SECS.SIZE in bytes, a power of two of at least one page.
            ssa_frame_size: SECS.SSAFRAMESIZE, in pages (at least 1).

        Raises:
            ValueError: called twice, or a value out of range.
        """
        if self._size is not None:
            raise ValueError("ECREATE may only happen once per enclave")
        if size < PAGE_SIZE or size & (size - 1) or size >= 1 << 64:
            raise ValueError(f"enclave size {size:#x} must be a power of two of at least a page")
        if not 1 <= ssa_frame_size < 1 << 32:
            raise ValueError(f"SSA frame size {ssa_frame_size} must be 1..2^32-1 pages")
        self._hash.update(_ECREATE.pack(b"ECREATE", ssa_frame_size, size))
        self._size = size

    def add_page(self, offset: int, data: bytes, flags: int, *, measure: bool = True) -> None:
        """EADD one page at ``offset`` and, when ``measure``, EEXTEND its 16 chunks.

        Args:
            offset: page offset from the enclave base (page-aligned, inside the enclave).
            data: exactly one page (4096 bytes).
            flags: SECINFO.FLAGS, e.g. ``SecinfoFlags.R | SecinfoFlags.PT_REG``.
            measure: EEXTEND the contents (``False`` for pages whose contents do not matter).

        Raises:
            ValueError: before :meth:`ecreate`, bad offset, page already added, wrong data size
                or invalid flags.
        """
        if self._size is None:
            raise ValueError("ECREATE must come before EADD")
        if offset % PAGE_SIZE or not 0 <= offset < self._size:
            raise ValueError(f"page offset {offset:#x} is not a page inside the enclave")
        if offset in self._added:
            raise ValueError(f"page {offset:#x} was already added")
        if len(data) != PAGE_SIZE:
            raise ValueError(f"a page is {PAGE_SIZE} bytes, got {len(data)}")
        _check_flags(flags)
        records = [_EADD.pack(b"EADD", offset, int(flags))]
        if measure:
            view = memoryview(data)
            for chunk in range(0, PAGE_SIZE, EEXTEND_CHUNK_SIZE):
                records.append(_EEXTEND.pack(b"EEXTEND", offset + chunk))
                records.append(bytes(view[chunk : chunk + EEXTEND_CHUNK_SIZE]))
        self._hash.update(b"".join(records))
        self._added.add(offset)

    def add_pages(self, offset: int, data: bytes, flags: int, *, measure: bool = True) -> int:
        """Add ``data`` as consecutive pages from ``offset``; the last page is zero-padded.

        An empty ``data`` adds nothing.

        Returns:
            The number of pages added.

        Raises:
            ValueError: as :meth:`add_page`.
        """
        count = 0
        for start in range(0, len(data), PAGE_SIZE):
            page = data[start : start + PAGE_SIZE]
            if len(page) < PAGE_SIZE:
                page = page + bytes(PAGE_SIZE - len(page))
            self.add_page(offset + start, page, flags, measure=measure)
            count += 1
        return count

    def digest(self) -> bytes:
        """MRENCLAVE as EINIT would finalise it now (the stream may still grow).

        Raises:
            ValueError: :meth:`ecreate` has not been called.
        """
        if self._size is None:
            raise ValueError("nothing measured: ECREATE has not happened")
        return self._hash.copy().digest()


def measure_blob(
    data: bytes,
    *,
    enclave_size: int,
    ssa_frame_size: int = 1,
    offset: int = 0,
    flags: int = SecinfoFlags.R | SecinfoFlags.PT_REG,
) -> bytes:
    """MRENCLAVE of an enclave holding only ``data``, laid out in pages from ``offset``.

    Raises:
        ValueError: the blob does not fit in the enclave, or as :meth:`EnclaveMeasurement.add_page`.
    """
    measurement = EnclaveMeasurement()
    measurement.ecreate(enclave_size, ssa_frame_size)
    pages = measurement.add_pages(offset, data, flags)
    _logger.debug("measured %d pages of %d bytes", pages, len(data))
    return measurement.digest()
