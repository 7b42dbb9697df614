"""`sealpod run`'s life cycle through the CLI: exit codes, signals, cleanup after SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from images import BUSYBOX, busybox_layer, write_image

from sealpod.image import layer_from_files
from sealpod.package import build_package
from sealpod.sgx import EnclaveSigningKey

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="FUSE mounts and bwrap as root"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="busybox-static is not installed"),
]

SEALPOD = str(Path(sys.executable).with_name("sealpod"))
SCRIPT = b'echo "started $$ $*"\n[ "$1" = sleep ] && sleep 60 & wait\nexit "${1:-0}"\n'


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("lifecycle")
    layers = [
        busybox_layer(work / "layers"),
        layer_from_files({"app/main.sh": SCRIPT}, work / "layers"),
    ]
    source = write_image(work / "oci", layers, argv=("/bin/busybox", "sh", "/app/main.sh"))
    build_package(source, work / "pkg", EnclaveSigningKey.generate())
    return work / "pkg"


def _mounts() -> set[str]:
    return {
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if "sealpod-shield" in line
    }


def test_exit_code_and_extra_args_pass_through(package: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [SEALPOD, "run", str(package), "--cache-dir", str(tmp_path), "--", "42"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 42, done.stderr
    assert done.stdout.startswith("started ") and done.stdout.rstrip().endswith(" 42")
    assert "no --coordinator: running WITHOUT attestation" in done.stderr
    assert "host input, not measured" in done.stderr


def test_sigkill_of_the_runtime_leaves_no_mount_and_no_application(
    package: Path, tmp_path: Path
) -> None:
    before = _mounts()
    with subprocess.Popen(
        [SEALPOD, "run", str(package), "--cache-dir", str(tmp_path), "--", "sleep"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()  # the application runs
        assert line.startswith("started")
        new = _mounts() - before
        assert len(new) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _mounts() - before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _mounts() - before  # libfuse's auto_unmount removed the shield
        # --die-with-parent took the sandbox down: no `sleep 60` left from this run.
        leftover = subprocess.run(
            ["pgrep", "-f", "busybox sh /app/main.sh sleep"], capture_output=True, check=False
        )
        assert leftover.returncode == 1, leftover.stdout


def test_writes_to_allowed_paths_never_reach_the_shared_cache(tmp_path: Path) -> None:
    work = tmp_path / "build"
    script = b"cat /work/seed.txt\necho changed > /work/seed.txt\necho new > /work/new.txt\n"
    layers = [
        busybox_layer(work / "layers"),
        layer_from_files({"app/w.sh": script, "work/seed.txt": b"seed\n"}, work / "layers"),
    ]
    source = write_image(work / "oci", layers, argv=("/bin/busybox", "sh", "/app/w.sh"))
    build_package(source, work / "pkg", EnclaveSigningKey.generate(), allow=["/work"])
    cache = tmp_path / "cache"
    stale = cache / "runs" / "run-killed"  # left by a run killed with SIGKILL
    (stale / "rootfs").mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (stale / "pid").write_text(str(dead.pid))
    for _ in range(2):  # the second run sees the image's seed again, not the first run's write
        done = subprocess.run(
            [SEALPOD, "run", str(work / "pkg"), "--cache-dir", str(cache)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert (done.returncode, done.stdout) == (0, "seed\n"), done.stderr
    (tree,) = [p for p in (cache / "layers").iterdir() if p.is_dir()]
    assert (tree / "work" / "seed.txt").read_text() == "seed\n"
    assert not (tree / "work" / "new.txt").exists()
    assert list((cache / "runs").iterdir()) == []  # the per-run copies and the stale one are gone
