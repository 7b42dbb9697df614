"""The MRENCLAVE primitive against hand-assembled SDM records.

Each expected digest is SHA-256 over records built here byte by byte from the SDM text
(Vol. 3D, ECREATE/EADD/EEXTEND operation: a 64-byte record per instruction, EEXTEND followed by
its 256 bytes), not through the module's own packing.
"""

from __future__ import annotations

import hashlib

import pytest

from sealpod.sgx import EnclaveMeasurement, SecinfoFlags, measure_blob

PAGE = 4096


def _le(value: int, size: int) -> bytes:
    return value.to_bytes(size, "little")


def ecreate_record(ssa_frame_size: int, size: int) -> bytes:
    record = b"ECREATE\x00" + _le(ssa_frame_size, 4) + _le(size, 8) + b"\x00" * 44
    assert len(record) == 64
    return record


def eadd_record(offset: int, secinfo_flags: int) -> bytes:
    record = b"EADD\x00\x00\x00\x00" + _le(offset, 8) + _le(secinfo_flags, 8) + b"\x00" * 40
    assert len(record) == 64
    return record


def eextend_records(offset: int, page: bytes) -> bytes:
    out = b""
    for chunk in range(0, PAGE, 256):
        header = b"EEXTEND\x00" + _le(offset + chunk, 8) + b"\x00" * 48
        assert len(header) == 64
        out += header + page[chunk : chunk + 256]
    return out


# SECINFO.FLAGS per SDM Table 38-8: R=bit0, W=bit1, X=bit2, PAGE_TYPE in bits 15:8
# (PT_TCS = 1, PT_REG = 2).
R, W, X = 1, 2, 4
PT_TCS, PT_REG = 1 << 8, 2 << 8


def test_secinfo_flag_values_match_the_sdm() -> None:
    assert SecinfoFlags.R == R
    assert SecinfoFlags.W == W
    assert SecinfoFlags.X == X
    assert SecinfoFlags.PT_TCS == PT_TCS
    assert SecinfoFlags.PT_REG == PT_REG


def test_one_page_enclave_matches_hand_assembled_records() -> None:
    page = bytes((i * 7 + 3) % 256 for i in range(PAGE))
    expected = hashlib.sha256(
        ecreate_record(1, 0x2000)
        + eadd_record(0x1000, R | X | PT_REG)
        + eextend_records(0x1000, page)
    ).digest()

    m = EnclaveMeasurement()
    m.ecreate(0x2000, 1)
    m.add_page(0x1000, page, SecinfoFlags.R | SecinfoFlags.X | SecinfoFlags.PT_REG)
    assert m.digest() == expected


def test_empty_enclave_is_the_hash_of_the_ecreate_record() -> None:
    m = EnclaveMeasurement()
    m.ecreate(0x10000000, 4)
    assert m.digest() == hashlib.sha256(ecreate_record(4, 0x10000000)).digest()


def test_unmeasured_page_contributes_only_its_eadd_record() -> None:
    expected = hashlib.sha256(
        ecreate_record(2, 0x4000) + eadd_record(0x0, R | W | X | PT_REG)
    ).digest()
    m = EnclaveMeasurement()
    m.ecreate(0x4000, 2)
    m.add_page(0, b"\xaa" * PAGE, R | W | X | PT_REG, measure=False)
    assert m.digest() == expected


def test_tcs_and_data_pages_in_order() -> None:
    tcs = b"\x00" * 16 + _le(0x3000, 8) + b"\x00" * (PAGE - 24)
    data = b"hello enclave".ljust(PAGE, b"\x00")
    expected = hashlib.sha256(
        ecreate_record(1, 0x8000)
        + eadd_record(0x0, PT_TCS)
        + eextend_records(0x0, tcs)
        + eadd_record(0x1000, R | W | PT_REG)
        + eextend_records(0x1000, data)
    ).digest()
    m = EnclaveMeasurement()
    m.ecreate(0x8000, 1)
    m.add_page(0, tcs, SecinfoFlags.PT_TCS)
    m.add_page(0x1000, data, SecinfoFlags.R | SecinfoFlags.W | SecinfoFlags.PT_REG)
    assert m.digest() == expected


def test_add_pages_zero_pads_the_last_page() -> None:
    blob = b"x" * (PAGE + 10)
    second = b"x" * 10 + b"\x00" * (PAGE - 10)
    expected = hashlib.sha256(
        ecreate_record(1, 0x10000)
        + eadd_record(0x2000, R | PT_REG)
        + eextend_records(0x2000, b"x" * PAGE)
        + eadd_record(0x3000, R | PT_REG)
        + eextend_records(0x3000, second)
    ).digest()
    assert measure_blob(blob, enclave_size=0x10000, offset=0x2000) == expected


def test_changing_one_byte_changes_the_measurement() -> None:
    blob = bytearray(b"manifest" * 1000)
    before = measure_blob(bytes(blob), enclave_size=0x10000)
    blob[5000] ^= 1
    assert measure_blob(bytes(blob), enclave_size=0x10000) != before


def test_page_order_is_part_of_the_measurement() -> None:
    a, b = b"a" * PAGE, b"b" * PAGE
    m1 = EnclaveMeasurement()
    m1.ecreate(0x4000, 1)
    m1.add_page(0, a, R | PT_REG)
    m1.add_page(0x1000, b, R | PT_REG)
    m2 = EnclaveMeasurement()
    m2.ecreate(0x4000, 1)
    m2.add_page(0x1000, b, R | PT_REG)
    m2.add_page(0, a, R | PT_REG)
    assert m1.digest() != m2.digest()


def test_permissions_are_part_of_the_measurement() -> None:
    page = b"\x90" * PAGE
    assert measure_blob(page, enclave_size=0x2000, flags=R | PT_REG) != measure_blob(
        page, enclave_size=0x2000, flags=R | X | PT_REG
    )


# --- misuse -----------------------------------------------------------------------------------


def _started(size: int = 0x4000) -> EnclaveMeasurement:
    m = EnclaveMeasurement()
    m.ecreate(size, 1)
    return m


def test_eadd_before_ecreate_is_refused() -> None:
    with pytest.raises(ValueError, match="ECREATE"):
        EnclaveMeasurement().add_page(0, bytes(PAGE), R | PT_REG)


def test_second_ecreate_is_refused() -> None:
    with pytest.raises(ValueError, match="once"):
        _started().ecreate(0x4000, 1)


@pytest.mark.parametrize("size", [0, 0x1800, 0x3000, PAGE - 1])
def test_enclave_size_not_power_of_two_pages_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        EnclaveMeasurement().ecreate(size, 1)


def test_zero_ssa_frame_size_is_refused() -> None:
    with pytest.raises(ValueError, match="SSA"):
        EnclaveMeasurement().ecreate(0x4000, 0)


@pytest.mark.parametrize("offset", [0x10, 0x4000, -0x1000])
def test_page_outside_enclave_or_unaligned_is_refused(offset: int) -> None:
    with pytest.raises(ValueError, match="offset"):
        _started().add_page(offset, bytes(PAGE), R | PT_REG)


def test_page_added_twice_is_refused() -> None:
    m = _started()
    m.add_page(0x1000, bytes(PAGE), R | PT_REG)
    with pytest.raises(ValueError, match="already"):
        m.add_page(0x1000, bytes(PAGE), R | PT_REG)


def test_short_page_is_refused() -> None:
    with pytest.raises(ValueError, match="4096"):
        _started().add_page(0, bytes(100), R | PT_REG)


@pytest.mark.parametrize("flags", [R, R | (3 << 8), W | PT_REG, R | PT_REG | 0x8])
def test_invalid_secinfo_flags_are_refused(flags: int) -> None:
    with pytest.raises(ValueError, match="SECINFO"):
        _started().add_page(0, bytes(PAGE), flags)


def test_blob_larger_than_enclave_is_refused() -> None:
    with pytest.raises(ValueError, match="offset"):
        measure_blob(bytes(3 * PAGE), enclave_size=0x2000)


def test_digest_before_ecreate_is_refused() -> None:
    with pytest.raises(ValueError, match="ECREATE"):
        EnclaveMeasurement().digest()
