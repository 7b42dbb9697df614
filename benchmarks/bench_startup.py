"""Start-up cost of `sealpod run`: ``python3 -c pass`` in the Debian image, three ways, same run.

* **bare bubblewrap** (baseline): the package's unpacked rootfs bound as ``/`` of the same
  bubblewrap sandbox ``sealpod run`` uses (:class:`sealpod.runtime.Sandbox`), no shield;
* **sealpod run, no coordinator**: the ``sealpod run PACKAGE`` command, from process start to
  exit (verify the package, find the unpacked tree in the cache, mount the shield, run, unmount);
* **sealpod run, with activation**: the same plus attesting to a coordinator (SQLite, simulated
  quotes) on loopback and receiving a secret file and env variable.

Each variant runs once to warm caches, then ``SEALPOD_BENCH_STARTUP_REPEAT`` times (default 9)
interleaved; the rows give medians and the overhead over the baseline (bars: <= 300 ms without a
coordinator, <= 500 ms with activation). A breakdown row set says where the time goes: the CLI's
imports (``python -X importtime``), package verification, the shield's mount, and the
application's run through the shield, measured with ``sealpod -vv run``'s timing lines.

The ``sealpod`` processes run with bytecode caching on, as an installed package does: the
environment's ``PYTHONDONTWRITEBYTECODE`` is dropped and ``PYTHONPYCACHEPREFIX`` points into the
bench's temporary directory, so the warm-up run writes the caches and the timed runs read them.
(An editable checkout run with ``PYTHONDONTWRITEBYTECODE=1`` recompiles every sealpod module on
each start, about 100 ms here, which is not start-up cost a deployment pays.)
``SEALPOD_BENCH_STARTUP_NO_PYC=1`` keeps the environment as it is.

Needs root, FUSE, bubblewrap and the cached Debian rootfs (tests/integration/images builds it
with debootstrap on first use).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO / "tests" / "integration"))

from images import (  # noqa: E402 - shared test-image helpers
    base_layer,
    debian_rootfs,
    running_coordinator,
    write_image,
)

from sealpod.image import extract_cached  # noqa: E402
from sealpod.package import build_package, open_package, package_rootfs_layers  # noqa: E402
from sealpod.runtime import Sandbox  # noqa: E402
from sealpod.sgx import EnclaveSigningKey  # noqa: E402
from sealpod.tee import SimulatedPlatform  # noqa: E402

SEALPOD = str(Path(sys.executable).with_name("sealpod"))
ARGV = ("python3", "-c", "pass")
BAR_PLAIN_MS = 300.0
BAR_ACTIVATION_MS = 500.0


def _timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench_startup: {argv[:3]} failed: {done.stderr.decode()[-500:]}")
    return elapsed


def _bare(tree: Path) -> float:
    start = time.perf_counter()
    status = Sandbox(
        root=tree, argv=["/usr/bin/python3", "-c", "pass"], env={"PATH": "/usr/bin:/bin"}
    ).run(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if status != 0:
        raise SystemExit(f"bench_startup: bare bubblewrap run exited with {status}")
    return time.perf_counter() - start


def _import_ms(env: dict[str, str]) -> float:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import sealpod.cli, sealpod.cli.run"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    total = 0
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if match and not match.group(2).startswith(" "):
            total += int(match.group(1))
    return total / 1000


def _phases(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run([*argv[:1], "-vv", *argv[1:]], capture_output=True, text=True, env=env)
    phases: dict[str, float] = {}
    for line in done.stderr.splitlines():
        match = re.search(r"timing: (.+?) (?:in|ran) (\d+) ms", line)
        if match:
            phases[match.group(1)] = float(match.group(2))
    return phases


def run() -> list[dict[str, Any]]:
    """Measure and return the rows (see the module docstring)."""
    repeat = int(os.environ.get("SEALPOD_BENCH_STARTUP_REPEAT", "9"))
    with tempfile.TemporaryDirectory(prefix="sealpod-bench-startup-") as tmp:
        work = Path(tmp)
        source = write_image(work / "image", [base_layer(debian_rootfs())], argv=ARGV)
        info = build_package(source, work / "pkg", EnclaveSigningKey.generate())
        package = work / "pkg"
        tree = extract_cached(package_rootfs_layers(open_package(package)).image)
        sim = SimulatedPlatform.init(work / "sim").directory
        with running_coordinator(work, sim) as coordinator:
            coordinator.set_manifest(
                {
                    "version": 1,
                    "packages": {"app": {"mrenclave": [info.mrenclave]}},
                    "services": {
                        "app": {
                            "package": "app",
                            "max_instances": 1,
                            "files": {"/secrets/key": "{{ secrets.k | hex }}"},
                            "env": {"K": "{{ secrets.k | hex }}"},
                        }
                    },
                    "secrets": {"k": {"type": "symmetric-key", "size": 128}},
                    "policy": {"allow_simulation": True},
                }
            )
            env = {**os.environ}
            if os.environ.get("SEALPOD_BENCH_STARTUP_NO_PYC") != "1":
                env.pop("PYTHONDONTWRITEBYTECODE", None)
                env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
            plain = [SEALPOD, "run", str(package)]
            activated = [
                *plain, "--coordinator", coordinator.url,
                "--coordinator-root", str(coordinator.root_file),
                "--service", "app", "--instance", "bench", "--sim-dir", str(sim),
            ]  # fmt: skip
            samples: dict[str, list[float]] = {"bare": [], "plain": [], "activated": []}
            _bare(tree), _timed(plain, env), _timed(activated, env)  # warm-up
            for _ in range(repeat):
                samples["bare"].append(_bare(tree))
                samples["plain"].append(_timed(plain, env))
                samples["activated"].append(_timed(activated, env))
            phases_plain = _phases(plain, env)
            phases_activated = _phases(activated, env)
            import_ms = _import_ms(env)
    med = {name: statistics.median(values) * 1000 for name, values in samples.items()}
    rows: list[dict[str, Any]] = [
        {
            "benchmark": "start-up python3 -c pass: sealpod run, no coordinator (median)",
            "sealpod": med["plain"],
            "baseline": med["bare"],
            "ratio": med["plain"] / med["bare"],
            "overhead_ms": med["plain"] - med["bare"],
            "bar": f"overhead <= {BAR_PLAIN_MS:.0f} ms: "
            f"{'met' if med['plain'] - med['bare'] <= BAR_PLAIN_MS else 'MISSED'} "
            f"(+{med['plain'] - med['bare']:.0f} ms)",
            "unit": "ms",
        },
        {
            "benchmark": "start-up python3 -c pass: sealpod run with activation (median)",
            "sealpod": med["activated"],
            "baseline": med["bare"],
            "ratio": med["activated"] / med["bare"],
            "overhead_ms": med["activated"] - med["bare"],
            "bar": f"overhead <= {BAR_ACTIVATION_MS:.0f} ms: "
            f"{'met' if med['activated'] - med['bare'] <= BAR_ACTIVATION_MS else 'MISSED'} "
            f"(+{med['activated'] - med['bare']:.0f} ms)",
            "unit": "ms",
        },
        {
            "benchmark": "start-up breakdown: CLI imports (python -X importtime)",
            "sealpod": import_ms,
            "baseline": None,
            "ratio": None,
            "unit": "ms",
        },
    ]
    for name, value in phases_activated.items():
        if name in phases_plain and name != "activation":
            value = phases_plain[name]
        rows.append(
            {
                "benchmark": f"start-up breakdown: {name}",
                "sealpod": value,
                "baseline": med["bare"] if name == "application" else None,
                "ratio": value / med["bare"] if name == "application" else None,
                "unit": "ms",
            }
        )
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
