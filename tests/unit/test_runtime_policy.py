"""Shield policy validation, the sandbox's bubblewrap options, and the in-memory volume provider."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from sealpod.errors import ConfigError
from sealpod.runtime import (
    Bind,
    InMemoryVolume,
    Sandbox,
    SandboxUser,
    ShieldPolicy,
    VolumeProvider,
)

_H = "ab" * 32


def _policy(**kw: object) -> ShieldPolicy:
    base: dict[str, object] = {"backing_root": Path("/nonexistent"), "trusted": {"/bin/sh": _H}}
    base.update(kw)
    return ShieldPolicy(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kw",
    [
        {"trusted": {"bin/sh": _H}},
        {"trusted": {"/bin/../etc/shadow": _H}},
        {"trusted": {"/bin/sh": "AB" * 32}},
        {"trusted": {"/bin/sh": "ab" * 31}},
        {"allowed": frozenset({"/data/"})},
        {"tmpfs": ("/",)},
        {"tmpfs": ("/bin",)},
        {"volumes": {"/": InMemoryVolume()}},
        {"memory_files": {"/bin/sh": b"x"}},
    ],
)
def test_malformed_or_overlapping_policy_is_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        _policy(**kw)


def test_policy_repr_hides_memory_files() -> None:
    secret = b"hunter2-very-secret"
    policy = _policy(memory_files={"/etc/key": secret})
    assert "hunter2" not in repr(policy)
    assert policy.memory_files["/etc/key"] == secret


def test_policy_is_read_only_after_construction() -> None:
    trusted = {"/bin/sh": _H}
    policy = _policy(trusted=trusted)
    trusted["/evil"] = _H
    assert "/evil" not in policy.trusted
    with pytest.raises(TypeError):
        policy.trusted["/x"] = _H  # type: ignore[index]


def test_sandbox_user_parses_uid_and_gid() -> None:
    assert SandboxUser.parse("1000:100") == SandboxUser(1000, 100)
    assert SandboxUser.parse("33") == SandboxUser(33, 33)
    for bad in ("www-data", "1:x", "-1", ""):
        with pytest.raises(ConfigError):
            SandboxUser.parse(bad)


def _pairs(options: list[str], flag: str) -> list[str]:
    return [options[i + 1] for i, o in enumerate(options) if o == flag]


def test_sandbox_options_unshare_every_namespace_but_the_network() -> None:
    options = Sandbox(root=Path("/mnt/shield"), argv=["/app"]).options()
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup"):
        assert flag in options
    assert "--unshare-net" not in options
    assert "--die-with-parent" in options and "--new-session" in options
    assert "--clearenv" in options
    i = options.index("--bind")
    assert options[i + 1 : i + 3] == ["/mnt/shield", "/"]
    assert _pairs(options, "--proc") == ["/proc"] and _pairs(options, "--dev") == ["/dev"]
    isolated = Sandbox(root=Path("/r"), argv=["/app"], share_net=False).options()
    assert "--unshare-net" in isolated


@pytest.mark.skipif(os.geteuid() != 0, reason="root-specific user handling")
def test_root_app_gets_no_user_namespace_and_a_reduced_capability_set() -> None:
    options = Sandbox(root=Path("/r"), argv=["/app"]).options()
    assert "--unshare-user" not in options and "--uid" not in options
    assert _pairs(options, "--cap-drop") == ["ALL"]
    assert "CAP_SYS_ADMIN" not in _pairs(options, "--cap-add")
    assert "CAP_NET_BIND_SERVICE" in _pairs(options, "--cap-add")


def test_other_users_run_in_a_user_namespace_with_their_ids() -> None:
    options = Sandbox(root=Path("/r"), argv=["/app"], user=SandboxUser(1000, 1001)).options()
    assert "--unshare-user" in options
    assert _pairs(options, "--uid") == ["1000"] and _pairs(options, "--gid") == ["1001"]


def test_environment_secrets_stay_off_the_command_line() -> None:
    sandbox = Sandbox(root=Path("/r"), argv=["/app", "serve"], env={"DB_PASSWORD": "s3cr3t-pw"})
    assert "s3cr3t-pw" not in " ".join(sandbox.command(args_fd=5, status_fd=6))
    assert "s3cr3t-pw" not in repr(sandbox)
    assert sandbox.command(5, 6)[-3:] == ["--", "/app", "serve"]
    options = sandbox.options()
    i = options.index("--setenv")
    assert options[i : i + 3] == ["--setenv", "DB_PASSWORD", "s3cr3t-pw"]


def test_binds_tmpfs_hostname_and_cwd_are_passed() -> None:
    options = Sandbox(
        root=Path("/r"),
        argv=["/app"],
        cwd="/srv",
        hostname="svc",
        tmpfs=["/run"],
        binds=[Bind("/host/data", "/data", read_only=False), Bind("/host/ro", "/ro")],
    ).options()
    assert _pairs(options, "--chdir") == ["/srv"]
    assert _pairs(options, "--hostname") == ["svc"]
    assert _pairs(options, "--tmpfs") == ["/run"]
    i = options.index("--bind", options.index("--bind") + 1)
    assert options[i : i + 3] == ["--bind", "/host/data", "/data"]
    j = options.index("--ro-bind")
    assert options[j : j + 3] == ["--ro-bind", "/host/ro", "/ro"]


@pytest.mark.parametrize(
    "kw", [{"argv": []}, {"argv": ["/a"], "cwd": "srv"}, {"argv": ["/a"], "env": {"A=B": "1"}}]
)
def test_bad_sandbox_settings_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Sandbox(root=Path("/r"), **kw)  # type: ignore[arg-type]


def test_in_memory_volume_behaves_like_a_filesystem() -> None:
    vol = InMemoryVolume()
    assert isinstance(vol, VolumeProvider)
    vol.mkdir("/d", 0o755)
    h = vol.open("/d/f", os.O_CREAT | os.O_RDWR, 0o644)
    assert vol.write(h, 3, b"abc") == 3
    assert vol.read(h, 0, 10) == b"\0\0\0abc"
    vol.truncate("/d/f", 4)
    assert vol.getattr("/d/f").size == 4
    vol.fsync(h)
    assert vol.readdir("/") == ["d"] and vol.readdir("/d") == ["f"]
    vol.rename("/d", "/e")
    vol.write(h, 0, b"z")  # a handle open across the rename of its directory follows it
    vol.release(h)
    assert vol.commits == 2
    assert vol.files() == {"/e/f": b"z\0\0a"}
    with pytest.raises(OSError) as info:
        vol.rmdir("/e")
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(FileExistsError):
        vol.open("/e/f", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    vol.unlink("/e/f")
    vol.rmdir("/e")
    with pytest.raises(FileNotFoundError):
        vol.getattr("/e")
