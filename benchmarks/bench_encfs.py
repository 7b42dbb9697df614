"""Encrypted-files throughput: ``sealpod.encfs`` against named baselines, in the same run.

* encrypt / decrypt: ``encrypt_file`` / ``decrypt_file`` on a 256 MiB file (disk to disk,
  atomic output, fsync included) against **raw ``AESGCM`` over the same bytes in 4 KiB
  chunks** with one key and no I/O (the floor of per-node Python crypto: the format forces
  4 KiB nodes, each under its own key).
* encrypt against a **plain file copy** (``shutil.copyfile`` + ``fsync``) of the same file: the
  I/O floor.
* random-access writer: ``EncryptedFile.write`` in 1 MiB pieces against ``encrypt_file``.

``SEALPOD_BENCH_ENCFS_MIB`` changes the size (default 256).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealpod.encfs import EncryptedFile, decrypt_file, encrypt_file

_MIB = 1 << 20


def _timed(action: Any) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _baseline_aesgcm(data: bytes, decrypt: bool) -> float:
    view = memoryview(data)
    aead = AESGCM(bytes(16))
    iv = bytes(12)
    if not decrypt:

        def encrypt_all() -> None:
            for offset in range(0, len(view), 4096):
                aead.encrypt(iv, view[offset : offset + 4096], None)

        return _timed(encrypt_all)
    sealed = [aead.encrypt(iv, view[o : o + 4096], None) for o in range(0, len(view), 4096)]

    def decrypt_all() -> None:
        for chunk in sealed:
            aead.decrypt(iv, chunk, None)

    return _timed(decrypt_all)


def _copy_durably(source: Path, target: Path) -> None:
    """The I/O floor: what encrypt_file also does (copy the bytes, fsync the output)."""
    shutil.copyfile(source, target)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run() -> list[dict[str, Any]]:
    """Run the benchmark; one row per comparison (MB/s, higher is better)."""
    mib = int(os.environ.get("SEALPOD_BENCH_ENCFS_MIB", "256"))
    size = mib * _MIB
    key = os.urandom(16)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-encfs-") as tmp:
        work = Path(tmp)
        plain = work / "plain"
        data = os.urandom(size)
        plain.write_bytes(data)
        sealed, back, copy = work / "sealed", work / "back", work / "copy"

        t_enc = _timed(lambda: encrypt_file(key, plain, sealed, path="/bench/file"))
        t_dec = _timed(lambda: decrypt_file(key, sealed, back, path="/bench/file"))
        if back.read_bytes() != data:
            raise SystemExit("bench_encfs: round trip failed")
        t_copy = _timed(lambda: _copy_durably(plain, copy))
        t_base_enc = _baseline_aesgcm(data, decrypt=False)
        t_base_dec = _baseline_aesgcm(data, decrypt=True)

        piece = _MIB
        writer_bytes = min(size, 64 * _MIB)

        def random_access_write() -> None:
            with EncryptedFile.create(work / "ra", key, path="/bench/ra") as f:
                for offset in range(0, writer_bytes, piece):
                    f.write(offset, data[offset : offset + piece])

        t_writer = _timed(random_access_write)
        prefix = work / "prefix"
        prefix.write_bytes(data[:writer_bytes])
        t_stream = _timed(lambda: encrypt_file(key, prefix, work / "ra2", path="/bench/ra"))

    def mbps(seconds: float, count: int = size) -> float:
        return count / seconds / 1e6

    rows.append(
        {
            "benchmark": f"encfs encrypt_file {mib} MiB vs raw AESGCM 4 KiB chunks (no I/O)",
            "sealpod": mbps(t_enc),
            "baseline": mbps(t_base_enc),
            "ratio": t_base_enc / t_enc,
            "unit": "MB/s",
        }
    )
    rows.append(
        {
            "benchmark": f"encfs decrypt_file {mib} MiB vs raw AESGCM 4 KiB chunks (no I/O)",
            "sealpod": mbps(t_dec),
            "baseline": mbps(t_base_dec),
            "ratio": t_base_dec / t_dec,
            "unit": "MB/s",
        }
    )
    rows.append(
        {
            "benchmark": f"encfs encrypt_file {mib} MiB vs plain file copy + fsync",
            "sealpod": mbps(t_enc),
            "baseline": mbps(t_copy),
            "ratio": t_copy / t_enc,
            "unit": "MB/s",
        }
    )
    rows.append(
        {
            "benchmark": f"EncryptedFile.write 1 MiB pieces ({writer_bytes // _MIB} MiB) "
            "vs encrypt_file",
            "sealpod": mbps(t_writer, writer_bytes),
            "baseline": mbps(t_stream, writer_bytes),
            "ratio": t_stream / t_writer,
            "unit": "MB/s",
        }
    )
    return rows


if __name__ == "__main__":
    for row in run():
        print(
            f"{row['benchmark']}: {row['sealpod']:.0f} {row['unit']} "
            f"(baseline {row['baseline']:.0f}, ratio {row['ratio']:.2f})",
            file=sys.stdout,
        )
