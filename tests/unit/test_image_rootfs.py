"""The cached Debian root filesystem builder, driven with a stand-in ``debootstrap`` script.

The stand-in records each call and writes a tiny tree, so the cache, the lock, the atomic
rename, the stripping and the mirror lookup are tested without a network or minutes of work.
The real debootstrap run is in tests/integration/test_rootfs_debian.py.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from sealpod.errors import ConfigError, EnvironmentUnavailableError
from sealpod.image import build_debian_rootfs, debian_mirror, rootfs_cache_key
from sealpod.image.rootfs import host_apt_sources

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
"""

FAKE_DEBOOTSTRAP = """#!/bin/sh
# Stand-in for debootstrap: log the arguments, wait a little, make a small tree.
echo "$@" >> "$FAKE_LOG"
sleep "${FAKE_SLEEP:-0}"
[ -n "$FAKE_FAIL" ] && { echo "E: Couldn't download packages" >&2; exit 1; }
target=$(eval echo "\\${$(($# - 1))}")
mkdir -p "$target/usr/bin" "$target/var/lib/apt/lists/partial" "$target/var/cache/apt/archives"
echo python > "$target/usr/bin/python3"
echo index > "$target/var/lib/apt/lists/deb.example_dists_bookworm_InRelease"
echo cache > "$target/var/cache/apt/pkgcache.bin"
echo deb > "$target/var/cache/apt/archives/python3.deb"
"""


@pytest.fixture
def apt_root(tmp_path: Path) -> Path:
    root = tmp_path / "apt"
    (root / "sources.list.d").mkdir(parents=True)
    (root / "sources.list.d" / "debian.sources").write_text(DEB822)
    (root / "sources.list.d" / "other.list.disabled-by-admin").write_text(
        "deb http://disabled.example/debian bookworm main\n"
    )
    return root


@pytest.fixture
def fake_debootstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "debootstrap"
    script.write_text(FAKE_DEBOOTSTRAP)
    script.chmod(0o755)
    log = tmp_path / "debootstrap.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    return log


def test_deb822_sources_are_read_in_order(apt_root: Path) -> None:
    sources = host_apt_sources(apt_root)
    assert [s.uri for s in sources] == [
        "http://mirror.example/debian",
        "http://security.example/debian-security",
    ]
    assert sources[0].suites == ("bookworm", "bookworm-updates")
    assert sources[0].signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"


def test_one_line_sources_are_read(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# comment\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main # trailing\n"
    )
    mirror = debian_mirror("bookworm", tmp_path)
    assert mirror.uri == "http://one.example/debian"
    assert mirror.signed_by == "/k.gpg"


def test_mirror_comes_from_the_source_serving_the_suite(apt_root: Path) -> None:
    assert debian_mirror("bookworm", apt_root).uri == "http://mirror.example/debian"
    assert debian_mirror("bookworm-security", apt_root).uri.startswith("http://security.")


def test_no_source_for_the_suite_is_an_environment_error(apt_root: Path) -> None:
    with pytest.raises(EnvironmentUnavailableError, match="trixie"):
        debian_mirror("trixie", apt_root)


def test_cache_key_depends_on_suite_and_package_set_only() -> None:
    key = rootfs_cache_key("bookworm", ["python3-minimal", "ca-certificates"])
    assert key == rootfs_cache_key("bookworm", ["ca-certificates", "python3-minimal"])
    assert key != rootfs_cache_key("trixie", ["python3-minimal", "ca-certificates"])
    assert key != rootfs_cache_key("bookworm", ["python3-minimal"])


def test_build_runs_debootstrap_once_then_uses_the_cache(
    tmp_path: Path, apt_root: Path, fake_debootstrap: Path
) -> None:
    cache = tmp_path / "cache"
    first = build_debian_rootfs("py", ["python3-minimal"], cache, apt_root=apt_root)
    second = build_debian_rootfs("py", ["python3-minimal"], cache, apt_root=apt_root)
    assert first == second
    assert first.parent == cache / "rootfs"
    assert first.name.startswith("py-")
    assert (first / "usr/bin/python3").read_text() == "python\n"
    calls = fake_debootstrap.read_text().splitlines()
    assert len(calls) == 1
    args = calls[0].split()
    assert "--variant=minbase" in args
    assert "--include=python3-minimal" in args
    assert "--keyring=/usr/share/keyrings/debian-archive-keyring.gpg" in args
    assert args[-1] == "http://mirror.example/debian"
    assert args[-3] == "bookworm"
    # Only the finished entry and its lock are left beside each other.
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name, f"{first.name}.lock"]


def test_cache_dir_defaults_to_sealpod_cache_dir(
    tmp_path: Path, apt_root: Path, fake_debootstrap: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEALPOD_CACHE_DIR", str(tmp_path / "env-cache"))
    built = build_debian_rootfs("py", [], apt_root=apt_root)
    assert built.parent == tmp_path / "env-cache" / "rootfs"


def test_apt_caches_and_lists_are_stripped(
    tmp_path: Path, apt_root: Path, fake_debootstrap: Path
) -> None:
    built = build_debian_rootfs("py", [], tmp_path / "cache", apt_root=apt_root)
    left = sorted(str(p.relative_to(built)) for p in (built / "var").rglob("*"))
    assert left == [
        "var/cache",
        "var/cache/apt",
        "var/cache/apt/archives",
        "var/lib",
        "var/lib/apt",
        "var/lib/apt/lists",
        "var/lib/apt/lists/partial",
    ]
    assert (built / "usr/bin/python3").is_file()


def test_leftover_of_an_interrupted_build_is_removed(
    tmp_path: Path, apt_root: Path, fake_debootstrap: Path
) -> None:
    cache = tmp_path / "cache"
    name = f"py-{rootfs_cache_key('bookworm', [])}"
    stale = cache / "rootfs" / f".build-{name}-killed"
    (stale / "rootfs/etc").mkdir(parents=True)
    other = cache / "rootfs" / ".build-other-entry-x"
    other.mkdir()
    built = build_debian_rootfs("py", [], cache, apt_root=apt_root)
    assert built.name == name
    assert not stale.exists()
    assert other.exists()  # another entry's build may be running; it is not ours to remove


def test_concurrent_builds_share_one_debootstrap_run(
    tmp_path: Path, apt_root: Path, fake_debootstrap: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SLEEP", "0.5")
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(build_debian_rootfs("py", ["x"], tmp_path / "cache", apt_root=apt_root))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(results) == 3 and len(set(results)) == 1
    assert len(fake_debootstrap.read_text().splitlines()) == 1


def test_failed_build_leaves_no_cache_entry(
    tmp_path: Path, apt_root: Path, fake_debootstrap: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(EnvironmentUnavailableError, match="Couldn't download"):
        build_debian_rootfs("py", [], tmp_path / "cache", apt_root=apt_root)
    leftovers = [p.name for p in (tmp_path / "cache/rootfs").iterdir()]
    assert all(name.endswith(".lock") for name in leftovers)


def test_building_without_root_is_refused(
    tmp_path: Path, apt_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(EnvironmentUnavailableError, match="root"):
        build_debian_rootfs("py", [], tmp_path / "cache", apt_root=apt_root)


def test_missing_debootstrap_is_an_environment_error(
    tmp_path: Path, apt_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr("shutil.which", lambda *args, **kwargs: None)
    with pytest.raises(EnvironmentUnavailableError, match="debootstrap"):
        build_debian_rootfs("py", [], tmp_path / "cache", apt_root=apt_root)


@pytest.mark.parametrize(
    ("name", "packages"),
    [("../up", []), ("py", ["python3;reboot"]), ("py", ["--foreign"]), ("", [])],
)
def test_bad_names_are_refused(tmp_path: Path, name: str, packages: list[str]) -> None:
    with pytest.raises(ConfigError):
        build_debian_rootfs(name, packages, tmp_path / "cache")
