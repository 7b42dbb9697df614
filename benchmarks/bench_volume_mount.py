"""Encrypted volume through the shield vs gocryptfs vs the plain directory, in one run.

Three targets, each a directory on the same host filesystem:

* **sealpod**: an encrypted volume (:class:`~sealpod.runtime.encrypted_volume.EncryptedVolumeProvider`)
  mounted in a shield that runs in its own process (the FUSE loop is single-threaded);
* **gocryptfs** (Debian package): ``gocryptfs -init`` then mounted with ``-nosyslog``;
* **plain**: the directory itself, no FUSE and no encryption.

Per target: sequential write of ``SEALPOD_BENCH_VOLUME_MIB`` (default 256) MiB in 1 MiB writes
followed by ``fsync`` (the fsync is what makes sealpod commit; it is timed for everyone), then a
sequential read in 1 MiB reads, then random 4 KiB reads (aligned, ``POSIX_FADV_RANDOM``) for a
fixed number of operations. Before each read the FUSE-level page cache of the file is dropped
(``POSIX_FADV_DONTNEED`` on the mounted file), so FUSE targets read through their daemon while
the backing ciphertext stays in the host page cache; the plain file is read from the page cache
(its "backing" is warm the same way). Rows give MB/s or ops/s, the ratio sealpod / baseline
(higher is better) and the bar from issue 5 (sequential >= 0.5x gocryptfs).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

_MIB = 1 << 20
_RANDOM_OPS = 20000

_SHIELD_PROCESS = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from sealpod.encfs.volume import LocalTagAuthority, Volume
    from sealpod.runtime import Shield, ShieldPolicy
    from sealpod.runtime.encrypted_volume import EncryptedVolumeProvider
    spec = json.loads(sys.argv[1])
    key = os.urandom(16)  # in memory only, as at activation
    authority = LocalTagAuthority()
    Volume.create(spec["volume"], key, "bench", tag_authority=authority).close()
    provider = EncryptedVolumeProvider.open_volume(spec["volume"], key, "bench",
                                                   tag_authority=authority)
    policy = ShieldPolicy(backing_root=Path(spec["root"]), trusted={},
                          volumes={"/vol": provider})
    with Shield(policy).mount(spec["mountpoint"]):
        print("mounted", flush=True)
        sys.stdin.readline()
    provider.close()
    with open("/proc/self/status") as f:
        hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    print(hwm * 1024, flush=True)
    """
)


def _write(path: Path, size: int) -> float:
    block = os.urandom(_MIB)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(size // _MIB):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def _read(path: Path, *, drop: bool) -> float:
    buffer = bytearray(_MIB)
    fd = os.open(path, os.O_RDONLY)
    try:
        if drop:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        start = time.perf_counter()
        while os.readv(fd, [buffer]):
            pass
        return time.perf_counter() - start
    finally:
        os.close(fd)


def _random_reads(path: Path, size: int, *, drop: bool) -> float:
    rng = random.Random(7)
    offsets = [rng.randrange(size // 4096) * 4096 for _ in range(_RANDOM_OPS)]
    fd = os.open(path, os.O_RDONLY)
    try:
        if drop:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        start = time.perf_counter()
        for offset in offsets:
            os.pread(fd, 4096, offset)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def _measure(directory: Path, size: int, *, fuse: bool) -> dict[str, float]:
    target = directory / "big.bin"
    write = _write(target, size)
    read = _read(target, drop=fuse)
    rand = _random_reads(target, size, drop=fuse)
    target.unlink()
    return {
        "write": size / write / 1e6,
        "read": size / read / 1e6,
        "random": _RANDOM_OPS / rand,
    }


def _gocryptfs(tmp: Path, size: int) -> dict[str, float]:
    if shutil.which("gocryptfs") is None:
        raise SystemExit("bench_volume_mount: needs gocryptfs (Debian package gocryptfs)")
    cipher, plain = tmp / "gocryptfs-cipher", tmp / "gocryptfs-mnt"
    cipher.mkdir()
    plain.mkdir()
    password = ["-extpass", "echo bench-password"]
    subprocess.run(
        ["gocryptfs", "-init", "-quiet", *password, str(cipher)],
        check=True,
        capture_output=True,
    )
    # gocryptfs daemonises: its daemon would keep a captured pipe open forever.
    subprocess.run(
        ["gocryptfs", "-quiet", "-nosyslog", *password, str(cipher), str(plain)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return _measure(plain, size, fuse=True)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(plain)], check=False)


def _sealpod(tmp: Path, size: int) -> tuple[dict[str, float], int]:
    root, mountpoint = tmp / "rootfs", tmp / "shield-mnt"
    root.mkdir()
    mountpoint.mkdir()
    spec = json.dumps(
        {"root": str(root), "volume": str(tmp / "volume"), "mountpoint": str(mountpoint)}
    )
    shield = subprocess.Popen(
        [sys.executable, "-c", _SHIELD_PROCESS, spec],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if shield.stdout is None or shield.stdin is None:
            raise SystemExit("bench_volume_mount: no pipe to the shield process")
        if shield.stdout.readline().strip() != "mounted":
            raise SystemExit("bench_volume_mount: the shield did not mount")
        result = _measure(mountpoint / "vol", size, fuse=True)
        shield.stdin.write("stop\n")
        shield.stdin.flush()
        peak_rss = int(shield.stdout.readline())
        shield.wait(timeout=60)
    finally:
        if shield.poll() is None:
            shield.kill()
            shield.wait()
    return result, peak_rss


def run() -> list[dict[str, Any]]:
    """Run the benchmark; one row per (operation, baseline)."""
    mib = int(os.environ.get("SEALPOD_BENCH_VOLUME_MIB", "256"))
    size = mib * _MIB
    with tempfile.TemporaryDirectory(prefix="bench-volume-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "plain").mkdir()
        plain = _measure(tmp / "plain", size, fuse=False)
        gocryptfs = _gocryptfs(tmp, size)
        sealpod, peak_rss = _sealpod(tmp, size)
    labels = {
        "write": (f"sequential write {mib} MiB + fsync", "MB/s"),
        "read": (f"sequential read {mib} MiB", "MB/s"),
        "random": (f"random 4 KiB reads ({_RANDOM_OPS} over {mib} MiB)", "ops/s"),
    }
    rows: list[dict[str, Any]] = []
    for key, (label, unit) in labels.items():
        ratio = sealpod[key] / gocryptfs[key]
        bar = ""
        if key in ("write", "read"):
            bar = f">= 0.5 ({'met' if ratio >= 0.5 else 'NOT met'})"
        rows.append(
            {
                "benchmark": f"volume mount: {label} vs gocryptfs",
                "sealpod": sealpod[key],
                "baseline": gocryptfs[key],
                "ratio": ratio,
                "bar": bar,
                "unit": unit,
            }
        )
        rows.append(
            {
                "benchmark": f"volume mount: {label} vs plain directory",
                "sealpod": sealpod[key],
                "baseline": plain[key],
                "ratio": sealpod[key] / plain[key],
                "unit": unit,
            }
        )
    rows.append(
        {
            "benchmark": "volume mount: shield process peak RSS (VmHWM)",
            "sealpod": peak_rss / _MIB,
            "baseline": None,
            "ratio": None,
            "unit": "MiB",
        }
    )
    return rows


if __name__ == "__main__":
    for row in run():
        baseline = "" if row["baseline"] is None else f" (baseline {row['baseline']:.0f}"
        ratio = "" if row["ratio"] is None else f", ratio {row['ratio']:.2f})"
        bar = f" bar {row['bar']}" if row.get("bar") else ""
        print(f"{row['benchmark']}: {row['sealpod']:.0f} {row['unit']}{baseline}{ratio}{bar}")
