"""Reading through the shield: sequential read of a 256 MiB trusted file against bare bubblewrap.

Both sides run ``busybox dd bs=1M`` inside the same bubblewrap sandbox (``Sandbox``), in the same
run, over the same backing file with the host page cache warm:

* **baseline**: the backing rootfs directory bound as ``/`` directly (no FUSE);
* **trusted, first open**: the file is a trusted file of a freshly mounted shield, so the read
  includes the whole-file SHA-256 check at open and the per-chunk check of every byte served;
* **trusted, re-read**: the same file opened again on that mount (verification cached, kernel
  page cache kept: the steady state of a library the application opens again and again);
* **allowed (passthrough), first read**: the same bytes as an allowed file, for FUSE's own
  cost.

Throughput is bytes / (time of the dd run - time of a ``true`` run in the same sandbox), so
bubblewrap's start-up is not counted; the baseline and the re-read are the mean of 4 reads in
one sandbox. The shield runs in its own process, whose peak RSS
(``VmHWM``) is reported. ``SEALPOD_BENCH_SHIELD_MIB`` changes the size (default 256).

One request's round trip: a separate process looks up ``_ROUND_TRIPS`` distinct missing names in
the shield's ``/data`` (each one FUSE ``LOOKUP``), against the same lookups in the backing
directory; once with the shield's default polling between requests and once with
``SEALPOD_FUSE_SPIN_US=0`` (each side sleeps and is woken for every request).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from sealpod.runtime import Sandbox

_MIB = 1 << 20
_ROUND_TRIPS = 3000
_LOOKUPS = textwrap.dedent(
    """
    import os, sys, time
    base, count = sys.argv[1], int(sys.argv[2])
    start = time.perf_counter()
    for i in range(count):
        try:
            os.stat(f"{base}/missing-{i}")
        except FileNotFoundError:
            pass
    print(count / (time.perf_counter() - start))
    """
)

_SHIELD_PROCESS = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from sealpod.runtime import Shield, ShieldPolicy
    spec = json.loads(sys.argv[1])
    policy = ShieldPolicy(backing_root=Path(spec["root"]), trusted=spec["trusted"],
                          allowed=frozenset(spec["allowed"]))
    with Shield(policy).mount(spec["mountpoint"]):
        print("mounted", flush=True)
        sys.stdin.readline()
    with open("/proc/self/status") as f:
        hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    print(hwm * 1024, flush=True)
    """
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_MIB):
            digest.update(block)
    return digest.hexdigest()


def _busybox() -> Path:
    found = shutil.which("busybox")
    if found is None or b"ld-linux" in Path(found).read_bytes()[:8192]:
        raise SystemExit("bench_shield: needs a static busybox (Debian package busybox-static)")
    return Path(found)


def _timed_run(root: Path, argv: list[str]) -> float:
    start = time.perf_counter()
    status = Sandbox(root=root, argv=argv, env={"PATH": "/bin"}).run(
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"bench_shield: {argv} exited with {status}")
    return elapsed


def _read_seconds(root: Path, path: str, repeat: int = 1) -> float:
    """Seconds to read ``path`` once, sequentially in 1 MiB blocks, bubblewrap start-up subtracted.

    With ``repeat`` > 1 the file is read that many times in one sandbox and the mean is returned
    (a read from the page cache takes about as long as bubblewrap's start-up, so one read alone
    would be mostly noise).
    """
    startup = min(_timed_run(root, ["/bin/busybox", "true"]) for _ in range(3))
    dd = f"/bin/busybox dd if={path} of=/dev/null bs=1M"
    script = "; ".join([dd] * repeat)
    elapsed = _timed_run(root, ["/bin/busybox", "sh", "-c", script]) - startup
    return max(elapsed, 1e-6) / repeat


def _lookups_per_second(directory: Path) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _LOOKUPS, str(directory), str(_ROUND_TRIPS)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(done.stdout)


def _with_shield(spec: str, env: dict[str, str], mountpoint: Path) -> float:
    """Lookups per second through a second shield process started with ``env``."""
    shield = subprocess.Popen(
        [sys.executable, "-c", _SHIELD_PROCESS, spec],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env},
    )  # fmt: skip
    try:
        if shield.stdout is None or shield.stdin is None:
            raise SystemExit("bench_shield: no pipe to the shield process")
        if shield.stdout.readline().strip() != "mounted":
            raise SystemExit("bench_shield: the shield did not mount")
        result = _lookups_per_second(mountpoint / "data")
        shield.stdin.write("stop\n")
        shield.stdin.flush()
        shield.stdout.readline()
        shield.wait(timeout=30)
        return result
    finally:
        if shield.poll() is None:
            shield.kill()
            shield.wait()


def _build(root: Path, size: int) -> dict[str, str]:
    for d in ("bin", "data", "shared", "proc", "dev"):
        (root / d).mkdir(parents=True)
    shutil.copy(_busybox(), root / "bin" / "busybox")
    big = root / "data" / "big.bin"
    with open(big, "wb") as f:
        for _ in range(size // _MIB):
            f.write(os.urandom(_MIB))
    os.link(big, root / "shared" / "big.bin")  # the same bytes, as an allowed file
    return {"/bin/busybox": _sha256(root / "bin" / "busybox"), "/data/big.bin": _sha256(big)}


def run() -> list[dict[str, Any]]:
    """Run the benchmark; rows of MB/s (higher is better) and the shield's peak memory."""
    mib = int(os.environ.get("SEALPOD_BENCH_SHIELD_MIB", "256"))
    size = mib * _MIB
    with tempfile.TemporaryDirectory(prefix="bench-shield-") as tmp:
        root, mountpoint = Path(tmp) / "rootfs", Path(tmp) / "mnt"
        mountpoint.mkdir()
        trusted = _build(root, size)
        _sha256(root / "data" / "big.bin")  # warm the host page cache for both sides
        bare = _read_seconds(root, "/data/big.bin", repeat=4)
        spec = json.dumps(
            {
                "root": str(root),
                "trusted": trusted,
                "allowed": ["/shared"],
                "mountpoint": str(mountpoint),
            }
        )
        shield = subprocess.Popen(
            [sys.executable, "-c", _SHIELD_PROCESS, spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            if shield.stdout is None or shield.stdin is None:
                raise SystemExit("bench_shield: no pipe to the shield process")
            if shield.stdout.readline().strip() != "mounted":
                raise SystemExit("bench_shield: the shield did not mount")
            lookups = _lookups_per_second(mountpoint / "data")
            first = _read_seconds(mountpoint, "/data/big.bin")
            again = _read_seconds(mountpoint, "/data/big.bin", repeat=4)
            passthrough = _read_seconds(mountpoint, "/shared/big.bin")
            shield.stdin.write("stop\n")
            shield.stdin.flush()
            peak_rss = int(shield.stdout.readline())
            shield.wait(timeout=30)
        finally:
            if shield.poll() is None:
                shield.kill()
                shield.wait()
        host_lookups = _lookups_per_second(root / "data")
        lookups_no_spin = _with_shield(spec, {"SEALPOD_FUSE_SPIN_US": "0"}, mountpoint)

    def mbps(seconds: float) -> float:
        return size / seconds / 1e6

    rows: list[dict[str, Any]] = [
        {
            "benchmark": f"shield: {mib} MiB trusted file, first open (verify + read) vs bare bwrap",
            "sealpod": mbps(first),
            "baseline": mbps(bare),
            "ratio": bare / first,
            "unit": "MB/s",
        },
        {
            "benchmark": f"shield: {mib} MiB trusted file, re-read (cached) vs bare bwrap",
            "sealpod": mbps(again),
            "baseline": mbps(bare),
            "ratio": bare / again,
            "unit": "MB/s",
        },
        {
            "benchmark": f"shield: {mib} MiB allowed file (passthrough), first read vs bare bwrap",
            "sealpod": mbps(passthrough),
            "baseline": mbps(bare),
            "ratio": bare / passthrough,
            "unit": "MB/s",
        },
        {
            "benchmark": "shield: request round trips (lookups of missing names) vs the host fs",
            "sealpod": lookups,
            "baseline": host_lookups,
            "ratio": lookups / host_lookups,
            "unit": "/s",
        },
        {
            "benchmark": "shield: request round trips, polling between requests vs without",
            "sealpod": lookups,
            "baseline": lookups_no_spin,
            "ratio": lookups / lookups_no_spin,
            "unit": "/s",
        },
        {
            "benchmark": "shield process peak RSS (VmHWM) after the reads",
            "sealpod": peak_rss / _MIB,
            "baseline": None,
            "ratio": None,
            "unit": "MiB",
        },
    ]
    return rows


if __name__ == "__main__":
    for row in run():
        baseline = "" if row["baseline"] is None else f" (baseline {row['baseline']:.0f}"
        ratio = "" if row["ratio"] is None else f", ratio {row['ratio']:.2f})"
        print(f"{row['benchmark']}: {row['sealpod']:.0f} {row['unit']}{baseline}{ratio}")
