"""A real Debian root filesystem through the cached builder, both image formats, and chroot.

Needs root and debootstrap (and the host's Debian mirror). The first build takes about a
minute or more; later runs reuse ``$SEALPOD_CACHE_DIR/rootfs`` (the same cache the demo and
``scripts/build_rootfs.py`` use).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from sealpod.image import (
    ImageConfig,
    build_debian_rootfs,
    extract_layers,
    open_image,
    rootfs_to_image,
)

CHROOT = shutil.which("chroot", path=os.environ.get("PATH", "") + ":/usr/sbin") or "chroot"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and chroot need root"),
    pytest.mark.skipif(
        shutil.which("debootstrap", path=os.environ.get("PATH", "") + ":/usr/sbin") is None,
        reason="debootstrap is not installed (scripts/bootstrap.sh installs it)",
    ),
]


@pytest.fixture(scope="module")
def python_rootfs() -> Path:
    return build_debian_rootfs("python", ["python3-minimal"])


def _listing(root: Path) -> dict[str, tuple[int, int, int, int, str]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            found[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, size, target)
    return found


def test_debian_rootfs_as_oci_and_docker_archive_runs_python(
    python_rootfs: Path, tmp_path: Path
) -> None:
    assert (python_rootfs / "usr/bin/python3").exists()
    assert not any((python_rootfs / "var/lib/apt/lists").glob("*_Packages"))
    config = ImageConfig(entrypoint=("/usr/bin/python3",), env=("PATH=/usr/bin:/bin",))
    oci = rootfs_to_image(python_rootfs, config, tmp_path / "oci")
    archive = rootfs_to_image(
        python_rootfs, config, tmp_path / "image.tar", image_format="docker-archive"
    )
    trees = []
    for spec in (f"oci:{oci}", f"docker-archive:{archive}"):
        image = open_image(spec)
        assert image.config.entrypoint == ("/usr/bin/python3",)
        dest = tmp_path / f"rootfs-{image.kind}"
        dest.mkdir()
        summary = extract_layers(image, dest)
        assert summary.files > 1000
        result = subprocess.run(
            [
                CHROOT,
                str(dest),
                "/usr/bin/python3",
                "-c",
                "import sys; print(sys.version_info[0] * 7)",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env={"PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "21"
        trees.append(_listing(dest))
    assert trees[0] == trees[1]
    original = {
        k: v
        for k, v in _listing(python_rootfs).items()
        if not (stat.S_ISCHR(v[0]) or stat.S_ISBLK(v[0]) or stat.S_ISFIFO(v[0]))
    }
    # Everything but device nodes comes back with its mode, owner, size and link target
    # (directory sizes depend on the filesystem's history, so they are left out).
    assert trees[0].keys() == original.keys()
    assert {k: v for k, v in original.items() if not stat.S_ISDIR(v[0])} == {
        k: v for k, v in trees[0].items() if not stat.S_ISDIR(v[0])
    }


def test_second_build_comes_from_the_cache(python_rootfs: Path) -> None:
    # python_rootfs already exists: this must return at once, with the same path.
    assert build_debian_rootfs("python", ["python3-minimal"]) == python_rootfs
