"""The shield's trusted tree is built on first access (start-up time): the policy still holds.

Trusted entries are added per directory when it is first looked up, so these tests tamper with
the backing tree *after* the mount and *before* any access, the window the lazy tree opens.
Expected hashes come from hashlib over the bytes the tests wrote.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from test_shield import build_rootfs, make_policy, run_app, unavailable_reason

from sealpod.errors import ConfigError

pytestmark = pytest.mark.integration


@pytest.fixture
def rootfs(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path / "rootfs"
    return root, build_rootfs(root)


def _errno_of(fn: object, *args: object) -> int:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    return 0


def _links(trusted: dict[str, str]) -> frozenset[str]:
    busybox_link = hashlib.sha256(b"busybox").hexdigest()
    return frozenset(p for p, d in trusted.items() if d == busybox_link)


def test_trusted_link_swapped_for_a_file_before_first_lookup_is_refused(
    rootfs: tuple[Path, dict[str, str]],
) -> None:
    from sealpod.runtime import Shield

    root, trusted = rootfs
    policy = make_policy(root, trusted, trusted_links=_links(trusted))
    with Shield(policy) as shield:
        # Same hash as the link's target string; the manifest says it is a link.
        (root / "bin" / "ls").unlink()
        (root / "bin" / "ls").write_bytes(b"busybox")
        assert _errno_of(os.lstat, shield.mountpoint / "bin" / "ls") == errno.EACCES


def test_trusted_file_swapped_for_a_link_before_first_lookup_is_refused(
    rootfs: tuple[Path, dict[str, str]],
) -> None:
    from sealpod.runtime import Shield

    root, trusted = rootfs
    content = (root / "etc" / "greeting").read_bytes().decode()
    policy = make_policy(root, trusted, trusted_links=_links(trusted))
    with Shield(policy) as shield:
        (root / "etc" / "greeting").unlink()
        (root / "etc" / "greeting").symlink_to(content)
        assert _errno_of(os.lstat, shield.mountpoint / "etc" / "greeting") == errno.EACCES


def test_link_types_from_the_backing_tree_are_fixed_at_mount(
    rootfs: tuple[Path, dict[str, str]],
) -> None:
    from sealpod.runtime import Shield

    root, trusted = rootfs
    with Shield(make_policy(root, trusted)) as shield:  # no trusted_links: lstat at mount
        (root / "bin" / "ls").unlink()
        (root / "bin" / "ls").write_bytes(b"busybox")
        assert _errno_of(os.lstat, shield.mountpoint / "bin" / "ls") == errno.EACCES


def test_tampered_file_in_a_directory_never_listed_before_is_refused(
    rootfs: tuple[Path, dict[str, str]],
) -> None:
    from sealpod.runtime import Shield

    root, trusted = rootfs
    with Shield(make_policy(root, trusted, trusted_links=_links(trusted))) as shield:
        (root / "opt" / "blob.bin").write_bytes(b"tampered")
        assert _errno_of(os.open, shield.mountpoint / "opt" / "blob.bin", os.O_RDONLY) == (
            errno.EACCES
        )


def test_untrusted_file_planted_next_to_lazy_entries_does_not_exist(
    rootfs: tuple[Path, dict[str, str]],
) -> None:
    from sealpod.runtime import Shield

    root, trusted = rootfs
    with Shield(make_policy(root, trusted, trusted_links=_links(trusted))) as shield:
        (root / "bin" / "planted").write_bytes(b"#!/bin/sh\necho owned\n")
        assert not (shield.mountpoint / "bin" / "planted").exists()
        names = sorted(os.listdir(shield.mountpoint / "bin"))
        assert names == sorted(p.rsplit("/", 1)[1] for p in trusted if p.startswith("/bin/"))


def test_listing_shows_exactly_the_policy_tree(
    rootfs: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    from sealpod.runtime import Shield

    root, trusted = rootfs
    with Shield(make_policy(root, trusted, trusted_links=_links(trusted))) as shield:
        assert sorted(os.listdir(shield.mountpoint)) == sorted(
            {"bin", "etc", "opt", "data", "tmp", "proc", "dev"}
        )
        assert os.listdir(shield.mountpoint / "etc") == ["greeting"]  # not "hidden"
        status, out, _ = run_app(shield.mountpoint, "cat /etc/greeting", tmp_path)
    assert status == 0
    assert out == (root / "etc" / "greeting").read_bytes()


def test_trusted_path_below_a_trusted_file_is_refused_at_mount(
    rootfs: tuple[Path, dict[str, str]],
) -> None:
    from sealpod.runtime import Shield

    root, trusted = rootfs
    bad = {**trusted, "/etc/greeting/inner": "f" * 64}
    with pytest.raises(ConfigError, match="non-directory"):
        Shield(make_policy(root, bad)).mount()


def test_trusted_links_outside_the_trusted_set_are_refused(
    rootfs: tuple[Path, dict[str, str]],
) -> None:
    root, trusted = rootfs
    with pytest.raises(ConfigError, match="trusted_links"):
        make_policy(root, trusted, trusted_links=frozenset({"/etc/hidden"}))
