"""The shield filesystem on a real FUSE mount, with a static busybox rootfs as the backing tree.

Every expected hash is computed here with hashlib from the files the test wrote, never taken from
the code under test. Attacks are done the way a host would: editing the backing directory.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

_APPLETS = (
    "sh",
    "cat",
    "echo",
    "ls",
    "id",
    "env",
    "sleep",
    "kill",
    "sha256sum",
    "stat",
    "ln",
    "cp",
)
_CHUNK = 1 << 20


def static_busybox() -> Path | None:
    found = shutil.which("busybox")
    if found is None:
        return None
    head = Path(found).read_bytes()[:8192]
    # A dynamically linked binary names its loader in PT_INTERP near the start of the file.
    return None if b"ld-linux" in head else Path(found)


def unavailable_reason() -> str | None:
    """Why the shield cannot be exercised here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (FUSE unavailable)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 (Debian package fuse3) is not installed"
    if os.geteuid() != 0:
        conf = Path("/etc/fuse.conf")
        if not conf.exists() or "\nuser_allow_other" not in "\n" + conf.read_text():
            return "not root and /etc/fuse.conf lacks user_allow_other (needed for allow_other)"
    if static_busybox() is None:
        return "a static busybox is needed for the test rootfs (Debian package busybox-static)"
    return None


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_rootfs(root: Path) -> dict[str, str]:
    """Write a tiny rootfs; return its trusted set (path -> sha256) computed independently."""
    busybox = static_busybox()
    assert busybox is not None
    (root / "bin").mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in _APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc" / "greeting").write_bytes(b"hello from the trusted image\n")
    (root / "etc" / "hidden").write_bytes(b"not in the manifest\n")
    (root / "opt").mkdir()
    (root / "opt" / "blob.bin").write_bytes(os.urandom(3 * _CHUNK + 123))
    (root / "data").mkdir()
    (root / "data" / "existing").write_bytes(b"allowed content\n")
    (root / "secret-dir").mkdir()
    (root / "secret-dir" / "x").write_bytes(b"x")
    trusted = {
        "/bin/busybox": sha256_file(root / "bin" / "busybox"),
        "/etc/greeting": sha256_file(root / "etc" / "greeting"),
        "/opt/blob.bin": sha256_file(root / "opt" / "blob.bin"),
    }
    for applet in _APPLETS:
        trusted[f"/bin/{applet}"] = hashlib.sha256(b"busybox").hexdigest()
    return trusted


@pytest.fixture
def rootfs(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path / "rootfs"
    return root, build_rootfs(root)


def make_policy(root: Path, trusted: Mapping[str, str], **kw: object):  # type: ignore[no-untyped-def]
    from sealpod.runtime import ShieldPolicy

    options: dict[str, object] = {"allowed": frozenset({"/data"}), "tmpfs": ("/tmp",)}
    options.update(kw)
    return ShieldPolicy(backing_root=root, trusted=trusted, **options)  # type: ignore[arg-type]


@pytest.fixture
def mounted(rootfs: tuple[Path, dict[str, str]]) -> Iterator[tuple[Path, Path]]:
    """(mountpoint, backing root) of a shield over the test rootfs."""
    from sealpod.runtime import Shield

    root, trusted = rootfs
    with Shield(make_policy(root, trusted)) as shield:
        yield shield.mountpoint, root


def run_app(
    mountpoint: Path, script: str, tmp_path: Path, **kw: object
) -> tuple[int, bytes, bytes]:
    """Run ``sh -c script`` in a sandbox on ``mountpoint``; return (status, stdout, stderr)."""
    from sealpod.runtime import Sandbox

    out, err = tmp_path / "app.out", tmp_path / "app.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        options: dict[str, object] = {"env": {"PATH": "/bin"}}
        options.update(kw)
        status = Sandbox(root=mountpoint, argv=["/bin/sh", "-c", script], **options).run(  # type: ignore[arg-type]
            stdout=o, stderr=e
        )
    return status, out.read_bytes(), err.read_bytes()


def _flip_byte_keep_times(path: Path, offset: int) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0x80]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _errno_of(fn: object, *args: object) -> int:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    return 0


# -- attacks ---------------------------------------------------------------------------------


def test_trusted_file_changed_after_policy_was_made_is_refused(
    rootfs: tuple[Path, dict[str, str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sealpod.runtime import Shield

    root, trusted = rootfs
    policy = make_policy(root, trusted)
    original = (root / "etc" / "greeting").read_bytes()
    _flip_byte_keep_times(root / "etc" / "greeting", 3)  # same size, one byte
    tampered = (root / "etc" / "greeting").read_bytes()
    assert len(tampered) == len(original) and tampered != original
    caplog.set_level(logging.WARNING, logger="sealpod.runtime.shield")
    with Shield(policy) as shield:
        status, out, err = run_app(shield.mountpoint, "cat /etc/greeting", tmp_path)
        assert _errno_of(open, shield.mountpoint / "etc" / "greeting", "rb") == errno.EACCES
    assert status != 0
    assert b"Permission denied" in err
    assert tampered not in out
    assert any(
        "/etc/greeting" in r.getMessage() and "manifest hash" in r.getMessage()
        for r in caplog.records
    )


def test_trusted_file_modified_while_app_has_it_open_never_delivers_tampered_bytes(
    mounted: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    mountpoint, root = mounted
    original = (root / "opt" / "blob.bin").read_bytes()
    caplog.set_level(logging.WARNING, logger="sealpod.runtime.shield")
    fd = os.open(mountpoint / "opt" / "blob.bin", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead past what we read
        assert os.pread(fd, 4096, 0) == original[:4096]
        offset = 2 * _CHUNK + 4096
        _flip_byte_keep_times(root / "opt" / "blob.bin", offset)
        with pytest.raises(OSError) as info:
            os.pread(fd, 4096, offset)
        assert info.value.errno == errno.EIO
        # Bytes of an untouched chunk are still served, and they are the verified ones.
        assert os.pread(fd, 4096, _CHUNK) == original[_CHUNK : _CHUNK + 4096]
    finally:
        os.close(fd)
    assert any("modified after it was verified" in r.getMessage() for r in caplog.records)
    assert _errno_of(open, mountpoint / "opt" / "blob.bin", "rb") == errno.EACCES


def test_trusted_file_swapped_while_open_serves_only_the_verified_file(
    mounted: tuple[Path, Path],
) -> None:
    mountpoint, root = mounted
    original = (root / "opt" / "blob.bin").read_bytes()
    with open(mountpoint / "opt" / "blob.bin", "rb") as app_file:
        first = app_file.read(1000)
        evil = root / "opt" / "evil.bin"
        evil.write_bytes(b"\xcc" * len(original))
        os.replace(evil, root / "opt" / "blob.bin")  # the host swaps the path
        rest = app_file.read()
    assert first + rest == original
    assert _errno_of(open, mountpoint / "opt" / "blob.bin", "rb") == errno.EACCES


def test_extra_file_in_backing_dir_is_invisible(mounted: tuple[Path, Path], tmp_path: Path) -> None:
    mountpoint, root = mounted
    (root / "etc" / "added-later").write_bytes(b"planted by the host\n")
    for path in ("etc/hidden", "etc/added-later", "secret-dir", "secret-dir/x"):
        assert _errno_of(os.stat, mountpoint / path) == errno.ENOENT, path
    assert sorted(os.listdir(mountpoint / "etc")) == ["greeting"]
    assert "secret-dir" not in os.listdir(mountpoint)
    status, out, _ = run_app(mountpoint, "ls /etc; cat /etc/hidden || echo refused", tmp_path)
    assert status == 0
    assert out.split() == [b"greeting", b"refused"]


def test_writing_a_trusted_file_is_refused(mounted: tuple[Path, Path], tmp_path: Path) -> None:
    mountpoint, root = mounted
    before = sha256_file(root / "etc" / "greeting")
    target = mountpoint / "etc" / "greeting"
    assert _errno_of(open, target, "r+b") == errno.EROFS
    assert _errno_of(open, target, "wb") == errno.EROFS
    assert _errno_of(os.truncate, target, 0) == errno.EROFS
    assert _errno_of(os.chmod, target, 0o777) == errno.EROFS
    assert _errno_of(os.unlink, target) in (errno.EROFS, errno.EACCES)
    assert _errno_of(os.rename, target, mountpoint / "etc" / "moved") in (errno.EROFS, errno.EACCES)
    status, _, err = run_app(mountpoint, "echo evil > /etc/greeting", tmp_path)
    assert status != 0 and b"Read-only" in err
    assert sha256_file(root / "etc" / "greeting") == before


def test_hard_link_to_trusted_file_is_refused(mounted: tuple[Path, Path]) -> None:
    mountpoint, _ = mounted
    assert _errno_of(os.link, mountpoint / "bin" / "busybox", mountpoint / "data" / "bb") in (
        errno.EPERM,
        errno.EROFS,
    )


def test_retargeted_trusted_symlink_is_refused(
    mounted: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    mountpoint, root = mounted
    assert os.readlink(mountpoint / "bin" / "cat") == "busybox"
    caplog.set_level(logging.WARNING, logger="sealpod.runtime.shield")
    (root / "bin" / "cat").unlink()
    (root / "bin" / "cat").symlink_to("/data/evil")
    assert _errno_of(os.readlink, mountpoint / "bin" / "cat") == errno.EACCES
    assert any("/bin/cat" in r.getMessage() for r in caplog.records)


def test_trusted_symlink_replaced_by_file_with_the_target_as_content_is_refused(
    mounted: tuple[Path, Path],
) -> None:
    mountpoint, root = mounted
    (root / "bin" / "ls").unlink()
    (root / "bin" / "ls").write_bytes(b"busybox")  # same hash as the link target string
    assert _errno_of(os.lstat, mountpoint / "bin" / "ls") == errno.EACCES


def test_secrets_in_memory_files_never_reach_host_disk(
    rootfs: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    from sealpod.runtime import Shield

    root, trusted = rootfs
    secret = b"sealpod-test-secret-" + os.urandom(16).hex().encode()
    policy = make_policy(root, trusted, memory_files={"/etc/db-password": secret})
    with Shield(policy) as shield:
        status, out, _ = run_app(
            shield.mountpoint,
            "cat /etc/db-password > /tmp/copy && sha256sum /tmp/copy /etc/db-password",
            tmp_path,
        )
    assert status == 0
    digest = hashlib.sha256(secret).hexdigest().encode()
    assert out.count(digest) == 2  # the app read it, and its copy in the tmpfs
    assert not (root / "etc" / "db-password").exists()
    for scanned in (root, Path(tempfile.gettempdir())):
        for dirpath, _dirs, files in os.walk(scanned):
            for name in files:
                path = Path(dirpath) / name
                try:
                    if path.is_symlink() or not path.is_file() or path.stat().st_size > 8 << 20:
                        continue
                    assert secret not in path.read_bytes(), path
                except (PermissionError, FileNotFoundError):
                    continue


# -- what exists and what passes through ------------------------------------------------------


def test_directories_leading_to_policy_entries_exist_and_list_only_them(
    mounted: tuple[Path, Path],
) -> None:
    mountpoint, _ = mounted
    assert sorted(os.listdir(mountpoint)) == ["bin", "data", "dev", "etc", "opt", "proc", "tmp"]
    assert sorted(os.listdir(mountpoint / "bin")) == sorted(("busybox", *_APPLETS))
    assert _errno_of(open, mountpoint / "etc" / "new", "wb") == errno.EACCES


def test_allowed_directory_passes_through_read_write(
    mounted: tuple[Path, Path], tmp_path: Path
) -> None:
    mountpoint, root = mounted
    status, out, _ = run_app(
        mountpoint,
        "cat /data/existing && echo written > /data/out && mkdir /data/d && ln -s out /data/l"
        " && cat /data/l",
        tmp_path,
    )
    assert status == 0 and out == b"allowed content\nwritten\n"
    assert (root / "data" / "out").read_bytes() == b"written\n"
    assert (root / "data" / "d").is_dir() and os.readlink(root / "data" / "l") == "out"
    os.unlink(mountpoint / "data" / "out")
    assert not (root / "data" / "out").exists()


def test_tmpfs_lives_in_memory(mounted: tuple[Path, Path], tmp_path: Path) -> None:
    mountpoint, root = mounted
    status, out, _ = run_app(
        mountpoint, "mkdir /tmp/d && echo t > /tmp/d/f && cat /tmp/d/f && ls /tmp", tmp_path
    )
    assert status == 0 and out == b"t\nd\n"
    assert not (root / "tmp").exists()


def test_volume_provider_serves_its_subtree(
    rootfs: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    from sealpod.runtime import InMemoryVolume, Shield

    root, trusted = rootfs
    volume = InMemoryVolume()
    with Shield(make_policy(root, trusted, volumes={"/var/lib/app": volume})) as shield:
        status, out, _ = run_app(
            shield.mountpoint,
            "mkdir /var/lib/app/db && echo row > /var/lib/app/db/t && cat /var/lib/app/db/t"
            " && cp /var/lib/app/db/t /var/lib/app/copy && ls /var/lib/app",
            tmp_path,
        )
    assert status == 0 and out == b"row\ncopy\ndb\n"
    assert volume.files() == {"/db/t": b"row\n", "/copy": b"row\n"}
    assert volume.commits >= 2
    assert not (root / "var").exists()


def test_two_shields_in_one_process_each_enforce_their_own_policy(
    rootfs: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    from sealpod.runtime import Shield

    root, trusted = rootfs
    only_greeting = {"/etc/greeting": trusted["/etc/greeting"]}
    with Shield(make_policy(root, trusted)) as first:
        second_at = tmp_path / "second"
        second_at.mkdir()
        with Shield(make_policy(root, only_greeting)).mount(second_at) as second:
            assert (first.mountpoint / "bin" / "busybox").exists()
            assert not (second.mountpoint / "bin" / "busybox").exists()
            assert (second.mountpoint / "etc" / "greeting").read_bytes().startswith(b"hello")
        assert (first.mountpoint / "etc" / "greeting").read_bytes().startswith(b"hello")


def test_unmount_removes_the_mount_and_its_own_mountpoint(
    rootfs: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    from sealpod.runtime import Shield, is_mounted

    root, trusted = rootfs
    shield = Shield(make_policy(root, trusted)).mount()
    mountpoint = shield.mountpoint
    assert is_mounted(mountpoint)
    shield.unmount()
    shield.unmount()  # idempotent
    assert not is_mounted(mountpoint) and not mountpoint.exists()
    given = tmp_path / "mount point"  # mountinfo escapes the space
    given.mkdir()
    with Shield(make_policy(root, trusted)).mount(given):
        assert is_mounted(given)
    assert not is_mounted(given) and given.is_dir()  # a given mountpoint is left in place


def test_mount_dies_with_its_owner_process(
    rootfs: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    from sealpod.runtime import is_mounted

    root, _ = rootfs
    mountpoint = tmp_path / "mp"
    mountpoint.mkdir()
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from sealpod.runtime import Shield, ShieldPolicy
                Shield(ShieldPolicy(backing_root=Path({str(root)!r}), trusted={{}},
                       allowed=frozenset({{"/data"}}))).mount({str(mountpoint)!r})
                print("mounted", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline() == b"mounted\n"
        assert is_mounted(mountpoint)
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        for _ in range(100):
            if not is_mounted(mountpoint):
                break
            time.sleep(0.05)
        assert not is_mounted(mountpoint)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()


def test_trusted_file_replaced_by_a_fifo_is_refused_without_hanging(
    mounted: tuple[Path, Path],
) -> None:
    mountpoint, root = mounted
    (root / "etc" / "greeting").unlink()
    os.mkfifo(root / "etc" / "greeting")
    assert _errno_of(open, mountpoint / "etc" / "greeting", "rb") == errno.EACCES


def test_symlink_planted_in_an_allowed_dir_cannot_reach_hidden_files(
    mounted: tuple[Path, Path], tmp_path: Path
) -> None:
    mountpoint, root = mounted
    (root / "data" / "escape").symlink_to("/etc/hidden")
    (root / "data" / "escape2").symlink_to("../secret-dir/x")
    status, out, _ = run_app(
        mountpoint, "cat /data/escape || echo no1; cat /data/escape2 || echo no2", tmp_path
    )
    assert status == 0 and out.split() == [b"no1", b"no2"]


class _FailingVolume:
    """A provider whose reads fail with a bug (not an OSError)."""

    def __init__(self) -> None:
        from sealpod.runtime import InMemoryVolume

        self.inner = InMemoryVolume()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def read(self, handle: int, offset: int, size: int) -> bytes:
        raise ValueError("provider bug")


def test_a_failing_volume_provider_gives_eio_and_the_shield_keeps_serving(
    rootfs: tuple[Path, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    from sealpod.runtime import Shield

    root, trusted = rootfs
    with Shield(make_policy(root, trusted, volumes={"/vol": _FailingVolume()})) as shield:
        (shield.mountpoint / "vol" / "f").write_bytes(b"data")
        with open(shield.mountpoint / "vol" / "f", "rb") as f:
            with pytest.raises(OSError) as info:
                f.read()
        assert info.value.errno == errno.EIO
        assert (shield.mountpoint / "etc" / "greeting").read_bytes().startswith(b"hello")
    assert any("internal error" in r.getMessage() for r in caplog.records)


def test_failed_mount_is_an_environment_error_and_frees_the_process_slot(
    rootfs: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    from sealpod.errors import EnvironmentUnavailableError
    from sealpod.runtime import Shield

    root, trusted = rootfs
    with pytest.raises(EnvironmentUnavailableError):
        Shield(make_policy(root, trusted)).mount(tmp_path / "does-not-exist")
    with Shield(make_policy(root, trusted)) as shield:
        assert (shield.mountpoint / "etc" / "greeting").exists()


def test_unmount_with_a_process_still_inside_ends_the_connection(
    rootfs: tuple[Path, dict[str, str]],
) -> None:
    from sealpod.runtime import Shield, is_mounted

    root, trusted = rootfs
    shield = Shield(make_policy(root, trusted)).mount()
    mountpoint = shield.mountpoint
    # A process left behind with its working directory inside keeps the detached mount's
    # connection alive; unmount must still return and leave nothing being served.
    straggler = subprocess.Popen(["sleep", "60"], cwd=mountpoint / "etc")
    try:
        started = time.monotonic()
        shield.unmount()
        assert time.monotonic() - started < 10
        assert not is_mounted(mountpoint)
        with pytest.raises(OSError) as info:
            os.listdir(f"/proc/{straggler.pid}/cwd")
        assert info.value.errno in (errno.ENOTCONN, errno.ENOENT, errno.EIO)
    finally:
        straggler.kill()
        straggler.wait()


def test_a_tampered_file_named_in_the_preverify_hint_is_still_refused(
    rootfs: tuple[Path, dict[str, str]],
) -> None:
    from sealpod.runtime import Shield

    root, trusted = rootfs
    _flip_byte_keep_times(root / "bin" / "busybox", 4000)
    hint = ("/bin/busybox", "/etc/greeting")
    with Shield(make_policy(root, trusted, preverify=hint)) as shield:
        time.sleep(0.2)  # let the background pass finish first
        assert _errno_of(open, shield.mountpoint / "bin" / "busybox", "rb") == errno.EACCES
        assert (shield.mountpoint / "etc" / "greeting").read_bytes().startswith(b"hello")


def test_a_file_changed_after_the_preverify_pass_is_refused_at_open(
    rootfs: tuple[Path, dict[str, str]],
) -> None:
    from sealpod.runtime import Shield

    root, trusted = rootfs
    with Shield(make_policy(root, trusted, preverify=("/etc/greeting",))) as shield:
        time.sleep(0.2)  # verified (and its bytes held) by the background pass
        _flip_byte_keep_times(root / "etc" / "greeting", 1)  # ctime moves: a new version
        assert _errno_of(open, shield.mountpoint / "etc" / "greeting", "rb") == errno.EACCES
