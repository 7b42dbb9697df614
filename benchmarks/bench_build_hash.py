"""Build hashing throughput: sealpod's parallel hasher against ``sha256sum`` with 2 processes.

Files: the cached Debian python rootfs (``python`` + ``python3-minimal``, the one the tests and
the demo build) when present, else about 200 MiB of generated files (many small ones and a few
large ones). The page cache is warmed for both contenders by reading every file once, then
each runs 3 times alternately and the best time counts:

* sealpod: :func:`sealpod.package._hashing.hash_files` over the regular files (all cores);
* sealpod (walk + hash): :func:`sealpod.package.collect_trusted_files` on the tree, i.e. what
  ``sealpod build`` does after extraction (walking, links, hard links included);
* baseline: ``xargs -0 -P2 -n 64 sha256sum`` over the same regular files.

Bar: sealpod >= 0.8x the baseline. ``SEALPOD_BENCH_BUILD_HASH_MIB`` sets the size of the
generated set (default 200).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sealpod.image import rootfs_cache_key, sealpod_cache_dir
from sealpod.package import collect_trusted_files
from sealpod.package._hashing import hash_files

_MIB = 1 << 20
_RUNS = 3


def _cached_rootfs() -> Path | None:
    name = f"python-{rootfs_cache_key('bookworm', ['python3-minimal'])}"
    path = sealpod_cache_dir() / "rootfs" / name
    return path if path.is_dir() else None


def _generate(root: Path, mib: int) -> None:
    """~``mib`` MiB: 70 % in 4 MiB files, the rest in files of 1-64 KiB."""
    large = (mib * 7 // 10) // 4
    for i in range(large):
        path = root / "large" / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(4 * _MIB))
    remaining = mib * _MIB - large * 4 * _MIB
    i = 0
    while remaining > 0:
        size = min(remaining, 1024 * (1 + (i * 7919) % 64))
        path = root / "small" / f"d{i % 50}" / f"f{i}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        remaining -= size
        i += 1


def _regular_files(root: Path) -> tuple[list[Path], list[int]]:
    paths, sizes = [], []
    for directory, _dirs, names in os.walk(root):
        for name in sorted(names):
            path = Path(directory) / name
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) and os.access(path, os.R_OK):
                paths.append(path)
                sizes.append(st.st_size)
    return paths, sizes


def _warm(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as stream:
            while stream.read(_MIB):
                pass


def _best(action: Callable[[], object]) -> float:
    times = []
    for _ in range(_RUNS):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def _sha256sum(paths: list[Path]) -> None:
    subprocess.run(
        ["xargs", "-0", "-P2", "-n", "64", "sha256sum"],
        input=b"\0".join(os.fsencode(p) for p in paths),
        stdout=subprocess.DEVNULL,
        check=True,
    )


def _measure(root: Path, label: str) -> list[dict[str, Any]]:
    paths, sizes = _regular_files(root)
    total = sum(sizes)
    _warm(paths)
    t_ours = _best(lambda: hash_files(paths, sizes))
    t_walk = _best(lambda: collect_trusted_files(root))
    t_base = _best(lambda: _sha256sum(paths))

    def mbps(seconds: float) -> float:
        return total / seconds / 1e6

    common = f"{label}: {len(paths)} files, {total / _MIB:.0f} MiB"
    return [
        {
            "benchmark": f"build hashing ({common}) vs sha256sum -P2",
            "sealpod": mbps(t_ours),
            "baseline": mbps(t_base),
            "ratio": t_base / t_ours,
            "bar": ">= 0.8",
            "unit": "MB/s",
        },
        {
            "benchmark": f"build walk + hash ({common}) vs sha256sum -P2",
            "sealpod": mbps(t_walk),
            "baseline": mbps(t_base),
            "ratio": t_base / t_walk,
            "bar": ">= 0.8",
            "unit": "MB/s",
        },
    ]


def run() -> list[dict[str, Any]]:
    """Hashing throughput rows (sealpod and baseline in the same run)."""
    rootfs = _cached_rootfs()
    if rootfs is not None:
        return _measure(rootfs, "cached Debian python rootfs")
    mib = int(os.environ.get("SEALPOD_BENCH_BUILD_HASH_MIB", "200"))
    with tempfile.TemporaryDirectory(prefix="sealpod-bench-hash-") as temp:
        root = Path(temp)
        _generate(root, mib)
        return _measure(root, "generated files")


if __name__ == "__main__":
    for row in run():
        print(
            f"{row['benchmark']}: {row['sealpod']:.0f} {row['unit']} "
            f"(baseline {row['baseline']:.0f}, ratio {row['ratio']:.2f}, bar {row['bar']})",
            file=sys.stdout,
        )
