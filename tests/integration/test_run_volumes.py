"""Encrypted volumes through `sealpod run`: the key comes from activation, the tag is pinned at
the coordinator, the host holds only ciphertext, and an older copy of the volume is refused.

A tiny busybox package (see ``images``) counts its runs in ``/data/count`` on its volume.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from images import BUSYBOX, Coordinator, busybox_layer, running_coordinator, write_image

from sealpod.errors import VerificationError
from sealpod.image import layer_from_files
from sealpod.package import build_package
from sealpod.runtime.run import run_package
from sealpod.sgx import EnclaveSigningKey
from sealpod.tee import SimulatedPlatform

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="FUSE mounts and bwrap as root"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="busybox-static is not installed"),
]

MARKER = "plaintext-marker-5f1c0de"
COUNTER = f"""
n=0
[ -f /data/count ] && n=$(cat /data/count)
n=$((n + 1))
echo "$n" > /data/count
echo "{MARKER} run $n" >> /data/note
cat /data/count
"""


@dataclass
class Setup:
    coordinator: Coordinator
    package: Path
    work: Path


@dataclass
class Built:
    package: Path
    mrenclave: str
    sim: Path
    work: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("volumes")
    layers = [
        busybox_layer(work / "layers"),
        layer_from_files({"app/count.sh": COUNTER.encode()}, work / "layers"),
    ]
    source = write_image(work / "oci", layers, argv=("/bin/busybox", "sh", "/app/count.sh"))
    info = build_package(
        source, work / "counter.pkg", EnclaveSigningKey.generate(), volumes={"data": "/data"}
    )
    sim = SimulatedPlatform.init(work / "sim").directory
    return Built(work / "counter.pkg", info.mrenclave, sim, work)


@pytest.fixture
def setup(built: Built, tmp_path: Path) -> Iterator[Setup]:
    """A fresh coordinator per test: each test's volume starts unpinned."""
    (tmp_path / "coordinator").mkdir()
    with running_coordinator(tmp_path / "coordinator", built.sim) as coordinator:
        coordinator.set_manifest(
            {
                "version": 1,
                "packages": {"counter": {"mrenclave": [built.mrenclave]}},
                "services": {
                    "counter": {
                        "package": "counter",
                        "max_instances": 5,
                        "volumes": {"data": "/data"},
                    }
                },
                "volumes": {"data": {"rollback_protected": True}},
                "policy": {"allow_simulation": True},
            }
        )
        yield Setup(coordinator, built.package, built.work)


def _run(setup: Setup, volume_dir: Path, out: Path) -> tuple[int, str]:
    with open(out, "wb") as stdout:
        status = run_package(
            setup.package,
            coordinator=setup.coordinator.url,
            coordinator_root=setup.coordinator.root_file,
            service="counter",
            instance="c-1",
            sim_dir=setup.coordinator.sim_dir,
            cache_dir=setup.work / "cache",
            volume_dir=volume_dir,
            stdout=stdout,
            stderr=stdout,
        )
    return status, out.read_text()


def _host_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def test_volume_keeps_data_across_runs_and_the_host_sees_only_ciphertext(
    setup: Setup, tmp_path: Path
) -> None:
    volumes = tmp_path / "volumes"
    assert _run(setup, volumes, tmp_path / "out1") == (0, "1\n")
    assert _run(setup, volumes, tmp_path / "out2") == (0, "2\n")
    stored = _host_bytes(volumes / "data")
    assert stored  # the volume is on the host ...
    assert MARKER.encode() not in stored  # ... encrypted
    assert b"run 2" not in stored


def test_deleted_volume_is_refused(setup: Setup, tmp_path: Path) -> None:
    volumes = tmp_path / "volumes"
    assert _run(setup, volumes, tmp_path / "out1")[0] == 0
    shutil.rmtree(volumes / "data")  # the host deletes it: a fresh empty volume must not do
    with pytest.raises(VerificationError) as refused:
        _run(setup, volumes, tmp_path / "out2")
    assert refused.value.reason == "rollback_detected"
    assert (tmp_path / "out2").read_text() == ""


def test_rolled_back_volume_is_refused(setup: Setup, tmp_path: Path) -> None:
    volumes = tmp_path / "volumes"
    assert _run(setup, volumes, tmp_path / "out1")[0] == 0
    shutil.copytree(volumes / "data", tmp_path / "snapshot")
    assert _run(setup, volumes, tmp_path / "out2")[0] == 0
    shutil.rmtree(volumes / "data")
    shutil.copytree(tmp_path / "snapshot", volumes / "data")  # the host restores the old copy
    with pytest.raises(VerificationError) as refused:
        _run(setup, volumes, tmp_path / "out3")
    assert refused.value.reason == "rollback_detected"
    assert (tmp_path / "out3").read_text() == ""  # the application never started
