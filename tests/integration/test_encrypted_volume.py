"""Encrypted volumes mounted in the shield: unmodified programs inside the bubblewrap sandbox.

The rootfs is a static busybox (as in test_shield.py) plus, when its libraries can be copied,
the host's sqlite3. Contents are checked by reopening the volume with the library after the
run and against bytes this test computes; the host directory is searched for the plaintext.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_shield import static_busybox, unavailable_reason

pytestmark = pytest.mark.integration

KEY = bytes(range(16))
NAME = "appdata"
MOUNT = "/var/lib/app"
_APPLETS = ("sh", "cat", "echo", "ls", "cp", "mv", "rm", "mkdir", "dd", "yes", "head", "sync")


def _unavailable() -> str | None:
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed"
    return unavailable_reason()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _add_trusted(root: Path, trusted: dict[str, str], source: Path, target: str) -> None:
    dest = root / target.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)  # follows links: the loader path becomes a regular file
    dest.chmod(0o755)
    trusted[target] = _sha256(dest)


def _sqlite_closure() -> list[tuple[Path, str]] | None:
    """(host file, path in the rootfs) for sqlite3 and the libraries ``ldd`` names."""
    binary = shutil.which("sqlite3")
    if binary is None or shutil.which("ldd") is None:
        return None
    listing = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False)
    if listing.returncode != 0:
        return None
    files = [(Path(binary), "/usr/bin/sqlite3")]
    for line in listing.stdout.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            files.append((Path(parts[2]), parts[2]))
        elif parts and parts[0].startswith("/"):
            files.append((Path(parts[0]), parts[0]))  # the loader
    return files


def build_rootfs(root: Path, *, with_sqlite: bool) -> dict[str, str]:
    busybox = static_busybox()
    assert busybox is not None
    (root / "bin").mkdir(parents=True)
    trusted: dict[str, str] = {}
    _add_trusted(root, trusted, busybox, "/bin/busybox")
    for applet in _APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
        trusted[f"/bin/{applet}"] = hashlib.sha256(b"busybox").hexdigest()
    if with_sqlite:
        closure = _sqlite_closure()
        if closure is None:
            pytest.skip("sqlite3 or ldd is not installed on the host")
        for source, target in closure:
            _add_trusted(root, trusted, source, target)
    return trusted


def _policy(root: Path, trusted: dict[str, str], provider: object):  # type: ignore[no-untyped-def]
    from sealpod.runtime import ShieldPolicy

    return ShieldPolicy(
        backing_root=root,
        trusted=trusted,
        tmpfs=("/tmp",),
        volumes={MOUNT: provider},  # type: ignore[dict-item]
    )


@pytest.fixture
def rootfs(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path / "rootfs"
    return root, build_rootfs(root, with_sqlite=False)


@pytest.fixture
def authority():  # type: ignore[no-untyped-def]
    from sealpod.encfs.volume import LocalTagAuthority

    return LocalTagAuthority()


@pytest.fixture
def volume_dir(tmp_path: Path, authority) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    from sealpod.encfs.volume import Volume

    directory = tmp_path / "volume"
    Volume.create(directory, KEY, NAME, tag_authority=authority).close()
    yield directory


def _run_shielded(
    root: Path,
    trusted: dict[str, str],
    provider: object,
    script: str,
    tmp_path: Path,
) -> tuple[int, bytes, bytes]:
    """What ``run_shielded`` does (mount, run, always unmount), with the output captured."""
    import dataclasses

    from sealpod.runtime import Sandbox, Shield

    out, err = tmp_path / "app.out", tmp_path / "app.err"
    sandbox = Sandbox(argv=["/bin/sh", "-c", script], env={"PATH": "/bin:/usr/bin"})
    with open(out, "wb") as o, open(err, "wb") as e:
        with Shield(_policy(root, trusted, provider)) as shield:
            status = dataclasses.replace(sandbox, root=shield.mountpoint).run(stdout=o, stderr=e)
    return status, out.read_bytes(), err.read_bytes()


def _files(directory: Path, authority) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    from sealpod.encfs.volume import Volume

    with Volume.open(directory, KEY, NAME, tag_authority=authority, deep=True) as volume:
        return {path: volume.read_file(path) for path in volume.iter_files()}


def _host_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def _provider(directory: Path, authority):  # type: ignore[no-untyped-def]
    from sealpod.runtime.encrypted_volume import EncryptedVolumeProvider

    return EncryptedVolumeProvider.open_volume(directory, KEY, NAME, tag_authority=authority)


# -- unmodified programs ---------------------------------------------------------------------


def test_busybox_writes_and_reads_plaintext_through_the_mount(
    rootfs: tuple[Path, dict[str, str]], volume_dir: Path, tmp_path: Path, authority
) -> None:  # type: ignore[no-untyped-def]
    root, trusted = rootfs
    provider = _provider(volume_dir, authority)
    script = (
        f"cd {MOUNT} && mkdir db && echo 'a secret row' > db/t && cp db/t db/copy"
        " && yes confidential | head -c 300000 > big && mv db/copy moved"
        " && dd if=big of=part bs=4096 skip=10 count=5 2>/dev/null"
        " && cat db/t && ls && head -c 12 big"
    )
    status, out, err = _run_shielded(root, trusted, provider, script, tmp_path)
    provider.close()
    assert status == 0, err
    assert out == b"a secret row\nbig\ndb\nmoved\npart\nconfidential"
    big = (b"confidential\n" * 30000)[:300000]
    assert _files(volume_dir, authority) == {
        "/db/t": b"a secret row\n",
        "/moved": b"a secret row\n",
        "/big": big,
        "/part": big[40960 : 40960 + 5 * 4096],
    }
    host = _host_bytes(volume_dir)
    assert b"secret row" not in host and b"confidential" not in host
    assert not (root / MOUNT.lstrip("/")).exists()


def test_tampered_volume_file_gives_eio_to_the_program(
    rootfs: tuple[Path, dict[str, str]], volume_dir: Path, tmp_path: Path, authority
) -> None:  # type: ignore[no-untyped-def]
    from sealpod.encfs.volume import Volume

    root, trusted = rootfs
    with Volume.open(volume_dir, KEY, NAME, tag_authority=authority) as volume:
        volume.write_file("/data", bytes(range(256)) * 200)
    record = json.loads((volume_dir / "volume.json").read_text())["record"]
    host = volume_dir / "objects" / record["files"]["/data"]["object"]
    raw = bytearray(host.read_bytes())
    raw[3 * 4096 + 5] ^= 1  # data node 1
    host.write_bytes(bytes(raw))
    provider = _provider(volume_dir, authority)
    status, out, err = _run_shielded(root, trusted, provider, f"cat {MOUNT}/data", tmp_path)
    provider.close()
    assert status != 0
    assert b"I/O error" in err or b"Input/output error" in err
    assert bytes(range(256)) * 200 != out


def test_rolled_back_volume_is_refused_at_mount(
    rootfs: tuple[Path, dict[str, str]], volume_dir: Path, tmp_path: Path, authority
) -> None:  # type: ignore[no-untyped-def]
    from sealpod.errors import VerificationError

    root, trusted = rootfs
    snapshot = tmp_path / "snapshot"
    shutil.copytree(volume_dir, snapshot)
    provider = _provider(volume_dir, authority)
    status, _, err = _run_shielded(root, trusted, provider, f"echo v2 > {MOUNT}/state", tmp_path)
    provider.close()
    assert status == 0, err
    shutil.rmtree(volume_dir)
    shutil.copytree(snapshot, volume_dir)
    with pytest.raises(VerificationError) as info:
        _provider(volume_dir, authority)
    assert info.value.reason == "rollback_detected"


def test_sqlite3_database_on_the_volume(volume_dir: Path, tmp_path: Path, authority) -> None:  # type: ignore[no-untyped-def]
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path / "rootfs"
    trusted = build_rootfs(root, with_sqlite=True)
    provider = _provider(volume_dir, authority)
    sql = (
        "create table t(k integer primary key, v text);"
        " insert into t(v) values ('alpha'),('bravo'),('charlie');"
        " update t set v = 'BRAVO' where k = 2; delete from t where k = 3;"
        " select k, v from t order by k;"
    )
    status, out, err = _run_shielded(
        root, trusted, provider, f'sqlite3 {MOUNT}/app.db "{sql}"', tmp_path
    )
    assert status == 0, err
    assert out == b"1|alpha\n2|BRAVO\n"
    status, out, err = _run_shielded(
        root,
        trusted,
        provider,
        f"sqlite3 {MOUNT}/app.db 'pragma integrity_check; select count(*) from t;'",  # noqa: S608
        tmp_path,
    )
    provider.close()
    assert status == 0, err
    assert out == b"ok\n2\n"
    files = _files(volume_dir, authority)
    assert files["/app.db"].startswith(b"SQLite format 3\0")
    assert b"alpha" not in _host_bytes(volume_dir)
    # The database the program wrote reads back with the host's sqlite3 too.
    plain = tmp_path / "plain.db"
    plain.write_bytes(files["/app.db"])
    check = subprocess.run(
        ["sqlite3", str(plain), "select v from t order by k"], capture_output=True, check=True
    )
    assert check.stdout == b"alpha\nBRAVO\n"


# -- crash safety through the real mount -----------------------------------------------------

_RUNTIME = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from sealpod.errors import VerificationError
    from sealpod.runtime import Sandbox, ShieldPolicy, run_shielded
    from sealpod.runtime.encrypted_volume import EncryptedVolumeProvider

    class FileAuthority:
        def __init__(self, path):
            self.path = Path(path)
        def _load(self):
            try:
                data = json.loads(self.path.read_text())
            except FileNotFoundError:
                return None
            return data["version"], bytes.fromhex(data["tag"])
        def current_tag(self, volume):
            latest = self._load()
            return None if latest is None else latest[1]
        def report_tag(self, volume, version, tag):
            latest = self._load()
            if latest is not None and version <= latest[0]:
                raise VerificationError("tag_replayed", "old version")
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w") as f:
                json.dump({"version": version, "tag": tag.hex()}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)

    spec = json.loads(sys.argv[1])
    provider = EncryptedVolumeProvider.open_volume(
        spec["volume"], bytes(range(16)), spec["name"],
        tag_authority=FileAuthority(spec["authority"]))
    policy = ShieldPolicy(backing_root=Path(spec["root"]), trusted=spec["trusted"],
                          tmpfs=("/tmp",), volumes={spec["mount"]: provider})
    sys.exit(run_shielded(policy, Sandbox(argv=["/bin/sh", "-c", spec["script"]],
                                          env={"PATH": "/bin"})))
    """
)

# Each round i: rewrite "f" via a temporary file and rename, "g" with O_TRUNC, and "h" in
# place without truncating (its committed nodes are overwritten: the journal's case).
_LOOP = (
    "i=0; while :; do i=$((i+1));"
    " yes f$i | head -c 150000 > {m}/f.tmp && mv {m}/f.tmp {m}/f;"
    " yes g$i | head -c 70000 > {m}/g;"
    " yes h$i | head -c 90000 | dd of={m}/h bs=8192 conv=notrunc 2>/dev/null; done"
)


def _round_content(prefix: str, i: int, size: int) -> bytes:
    return (f"{prefix}{i}\n".encode() * size)[:size]


@pytest.mark.timeout(120)
def test_sigkill_of_runtime_during_writes_leaves_committed_content(
    rootfs: tuple[Path, dict[str, str]], volume_dir: Path, tmp_path: Path
) -> None:
    from sealpod.encfs.volume import Volume

    root, trusted = rootfs
    authority_file = tmp_path / "authority.json"
    # The volume was created against the in-memory fixture authority; start a durable one.
    with Volume.open(volume_dir, KEY, NAME) as volume:
        tag, version = volume.tag, volume.version
    authority_file.write_text(json.dumps({"version": version, "tag": tag.hex()}))
    spec = {
        "volume": str(volume_dir),
        "name": NAME,
        "authority": str(authority_file),
        "root": str(root),
        "trusted": trusted,
        "mount": MOUNT,
        "script": _LOOP.format(m=MOUNT),
    }
    rng = random.Random(99)
    rounds: list[int] = []
    # The runtime's own mount point goes under a private TMPDIR, so its cleanup is checkable.
    private_tmp = tmp_path / "runtime-tmp"
    private_tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(private_tmp))
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline or len(rounds) < 3:
        runtime = subprocess.Popen(
            [sys.executable, "-c", _RUNTIME, json.dumps(spec)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        time.sleep(rng.uniform(0.8, 2.0))
        # Only the runtime: bubblewrap dies with it (--die-with-parent) and libfuse's
        # auto_unmount helper, which must survive, removes the dead mount.
        runtime.send_signal(signal.SIGKILL)
        _, err = runtime.communicate()
        assert runtime.returncode == -signal.SIGKILL, err.decode()[-3000:]
        _wait_unmounted(private_tmp)

        class _Authority:
            def current_tag(self, volume: str) -> bytes | None:
                return bytes.fromhex(json.loads(authority_file.read_text())["tag"])

            def report_tag(self, volume: str, version: int, tag: bytes) -> None:
                raise AssertionError("read-back must not commit")

        files = _files(volume_dir, _Authority())
        seen = 0
        for name, prefix, size in (("/f", "f", 150000), ("/g", "g", 70000), ("/h", "h", 90000)):
            if name not in files:
                continue
            content = files[name]
            first = content.split(b"\n", 1)[0].decode()
            assert first.startswith(prefix), (name, content[:40])
            assert content == _round_content(prefix, int(first[1:]), size), name
            seen = max(seen, int(first[1:]))
        rounds.append(seen)
    assert max(rounds) >= 3, f"too few rounds committed to test anything: {rounds}"
    print("rounds seen after each kill:", rounds)


def _mounted_under(directory: Path) -> list[str]:
    prefix = str(directory) + "/"
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def _wait_unmounted(directory: Path) -> None:
    for _ in range(100):
        if not _mounted_under(directory):
            break
        time.sleep(0.05)
    else:
        for mountpoint in _mounted_under(directory):
            subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False)
        raise AssertionError("the dead runtime's mount was not removed by auto_unmount")
    for leftover in directory.iterdir():
        leftover.rmdir()  # the dead runtime could not remove its own mount point
