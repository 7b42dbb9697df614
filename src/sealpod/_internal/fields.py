"""Fixed-layout binary structures declared as field tables.

A structure is a frozen dataclass whose ``FIELDS`` class attribute lists ``(name, size, kind)`` in
order; ``kind`` is ``"bytes"`` or ``"u16"``/``"u32"``/``"u64"`` (little-endian, as everything in
SGX/TDX). :func:`unpack_fields` and :func:`pack_fields` turn bytes into keyword arguments and back,
so a structure round-trips byte for byte, reserved fields included.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Literal

FieldKind = Literal["bytes", "u16", "u32", "u64"]
FieldTable = Sequence[tuple[str, int, FieldKind]]

_INT_SIZES = {"u16": 2, "u32": 4, "u64": 8}
_STRUCT_CODES = {"u16": "H", "u32": "I", "u64": "Q"}


@lru_cache(maxsize=64)
def _compiled(
    table: tuple[tuple[str, int, FieldKind], ...],
) -> tuple[struct.Struct, tuple[str, ...]]:
    # One struct.Struct per table: parsing sits on the verification hot path.
    codes = "".join(
        f"{size}s" if kind == "bytes" else _STRUCT_CODES[kind] for _, size, kind in table
    )
    return struct.Struct("<" + codes), tuple(name for name, _, _ in table)


def table_size(table: FieldTable) -> int:
    """The total size in bytes of a field table."""
    return sum(size for _, size, _ in table)


def unpack_fields(table: FieldTable, data: bytes | memoryview) -> dict[str, int | bytes]:
    """Split ``data`` (exactly :func:`table_size` bytes) into named values.

    Raises:
        ValueError: ``data`` has the wrong length (callers translate this).
    """
    compiled, names = _compiled(tuple(table))
    if len(data) != compiled.size:
        raise ValueError(f"expected {compiled.size} bytes, got {len(data)}")
    return dict(zip(names, compiled.unpack(data), strict=True))


def pack_fields(table: FieldTable, values: Mapping[str, object]) -> bytes:
    """Serialise named values in table order.

    Raises:
        ValueError: a value has the wrong size or type.
    """
    out = bytearray()
    for name, size, kind in table:
        value = values[name]
        if kind == "bytes":
            if not isinstance(value, bytes) or len(value) != size:
                raise ValueError(f"field {name} must be {size} bytes")
            out += value
        else:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"field {name} must be an integer")
            if _INT_SIZES[kind] != size or not 0 <= value < 1 << (8 * size):
                raise ValueError(f"field {name} does not fit in {kind}")
            out += value.to_bytes(size, "little")
    return bytes(out)
