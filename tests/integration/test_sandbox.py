"""The bubblewrap sandbox on a real shield: exit codes, signals, cleanup, environment, user."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from test_shield import build_rootfs, make_policy, run_app, unavailable_reason

pytestmark = pytest.mark.integration


@pytest.fixture
def rootfs(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    reason = unavailable_reason()
    if reason is None and shutil.which("bwrap") is None:
        reason = "bwrap (Debian package bubblewrap) is not installed"
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path / "rootfs"
    return root, build_rootfs(root)


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temporary directory where the shield makes its own mountpoint."""
    path = tmp_path / "private-tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


def _shield_mounts() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line for line in f if "sealpod-shield" in line]


def test_exit_code_7_passes_through(rootfs: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    from sealpod.runtime import Shield

    root, trusted = rootfs
    with Shield(make_policy(root, trusted)) as shield:
        assert run_app(shield.mountpoint, "exit 7", tmp_path)[0] == 7
        assert run_app(shield.mountpoint, "exit 0", tmp_path)[0] == 0


def test_app_killed_by_a_signal_gives_128_plus_the_signal(
    rootfs: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    from sealpod.runtime import Shield

    root, trusted = rootfs
    with Shield(make_policy(root, trusted)) as shield:
        assert run_app(shield.mountpoint, "kill -TERM $$", tmp_path)[0] == 128 + signal.SIGTERM
        assert run_app(shield.mountpoint, "kill -USR1 $$", tmp_path)[0] == 128 + signal.SIGUSR1


def test_app_killed_with_sigkill_leaves_no_mount_and_no_temp_dirs(
    rootfs: tuple[Path, dict[str, str]], private_tmp: Path
) -> None:
    from sealpod.runtime import Sandbox, run_shielded

    root, trusted = rootfs
    sandbox = Sandbox(
        argv=["/bin/sh", "-c", "echo x > /tmp/state; ls /tmp; kill -KILL $$"],
        env={"PATH": "/bin"},
    )
    assert run_shielded(make_policy(root, trusted), sandbox) == 128 + signal.SIGKILL
    assert os.listdir(private_tmp) == []
    assert not any(str(private_tmp) in line for line in _shield_mounts())


def _runtime_process(
    root: Path, trusted: dict[str, str], script: str, tmpdir: Path, stop_timeout: float = 5.0
) -> subprocess.Popen[bytes]:
    """A separate runtime (its own main thread, as `sealpod run` would be) running ``script``."""
    spec = json.dumps(
        {"root": str(root), "trusted": trusted, "script": script, "stop": stop_timeout}
    )
    code = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from sealpod.runtime import Sandbox, ShieldPolicy, run_shielded
        spec = json.loads(sys.argv[1])
        policy = ShieldPolicy(backing_root=Path(spec["root"]), trusted=spec["trusted"],
                              tmpfs=("/tmp",))
        sandbox = Sandbox(argv=["/bin/sh", "-c", spec["script"]], env={"PATH": "/bin"},
                          stop_timeout=spec["stop"])
        sys.exit(run_shielded(policy, sandbox))
        """
    )
    env = dict(os.environ, TMPDIR=str(tmpdir))
    return subprocess.Popen([sys.executable, "-c", code, spec], stdout=subprocess.PIPE, env=env)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_runtime_is_forwarded_to_the_app(
    rootfs: tuple[Path, dict[str, str]], signum: signal.Signals, private_tmp: Path
) -> None:
    root, trusted = rootfs
    runtime = _runtime_process(
        root,
        trusted,
        f"trap 'echo got-{signum.name}; exit 42' {signum.name[3:]}; echo ready;"
        " while :; do sleep 0.05; done",
        private_tmp,
    )
    try:
        assert runtime.stdout is not None
        assert runtime.stdout.readline() == b"ready\n"
        runtime.send_signal(signum)
        assert runtime.wait(timeout=20) == 42
        assert runtime.stdout.read() == f"got-{signum.name}\n".encode()
    finally:
        if runtime.poll() is None:
            runtime.kill()
            runtime.wait()
        if runtime.stdout is not None:
            runtime.stdout.close()
    assert os.listdir(private_tmp) == []


def test_app_ignoring_sigterm_is_killed_after_the_stop_timeout(
    rootfs: tuple[Path, dict[str, str]], private_tmp: Path
) -> None:
    root, trusted = rootfs
    runtime = _runtime_process(
        root,
        trusted,
        "trap '' TERM; echo ready; while :; do sleep 0.05; done",
        private_tmp,
        stop_timeout=1.0,
    )
    try:
        assert runtime.stdout is not None and runtime.stdout.readline() == b"ready\n"
        runtime.send_signal(signal.SIGTERM)
        # stop_timeout is 1 s; then the sandbox is killed (bwrap by SIGKILL -> 137).
        assert runtime.wait(timeout=30) == 128 + signal.SIGKILL
    finally:
        if runtime.poll() is None:
            runtime.kill()
            runtime.wait()
        if runtime.stdout is not None:
            runtime.stdout.close()


def test_app_sees_only_the_given_environment(
    rootfs: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    from sealpod.runtime import Sandbox, Shield

    root, trusted = rootfs
    os.environ["SEALPOD_TEST_LEAK"] = "leaked"
    try:
        with Shield(make_policy(root, trusted)) as shield:
            out = tmp_path / "env.out"
            with open(out, "wb") as o:
                status = Sandbox(
                    root=shield.mountpoint,
                    argv=["/bin/env"],
                    env={"PATH": "/bin", "GREETING": "hi there"},
                ).run(stdout=o)
    finally:
        del os.environ["SEALPOD_TEST_LEAK"]
    assert status == 0
    # bubblewrap itself sets PWD to the working directory after --chdir; nothing else passes.
    assert sorted(out.read_bytes().splitlines()) == [b"GREETING=hi there", b"PATH=/bin", b"PWD=/"]


def test_env_secret_is_not_visible_on_process_command_lines(
    rootfs: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    from sealpod.runtime import Shield

    root, trusted = rootfs
    secret = "pw-" + os.urandom(8).hex()
    with Shield(make_policy(root, trusted)) as shield:
        # pid 1 in the sandbox is bubblewrap's reaper: its command line is bwrap's.
        status, out, _ = run_app(
            shield.mountpoint,
            'cat /proc/1/cmdline; echo; echo "env-len=${#DB_PASSWORD}"',
            tmp_path,
            env={"PATH": "/bin", "DB_PASSWORD": secret},
        )
    assert status == 0
    assert b"bwrap" in out and f"env-len={len(secret)}".encode() in out
    assert out.count(secret.encode()) == 0


def test_app_runs_as_the_image_user_in_its_own_namespaces(
    rootfs: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    from sealpod.runtime import SandboxUser, Shield

    root, trusted = rootfs
    with Shield(make_policy(root, trusted)) as shield:
        status, out, _ = run_app(
            shield.mountpoint,
            "id -u; id -g; echo $$; cat /proc/sys/kernel/hostname; pwd; echo f > /data/by-app",
            tmp_path,
            user=SandboxUser(1000, 1001),
            hostname="svc-host",
            cwd="/data",
        )
    assert status == 0
    assert out.split() == [b"1000", b"1001", b"2", b"svc-host", b"/data"]
    st = (root / "data" / "by-app").stat()
    assert (st.st_uid, st.st_gid) == (1000, 1001)


def test_missing_mount_point_under_the_root_is_a_config_error(tmp_path: Path) -> None:
    from sealpod.errors import ConfigError
    from sealpod.runtime import Sandbox

    if shutil.which("bwrap") is None:
        pytest.skip("bwrap (Debian package bubblewrap) is not installed")
    with pytest.raises(ConfigError):
        Sandbox(root=tmp_path, argv=["/bin/true"]).run()


def test_failure_before_the_app_starts_still_cleans_up(
    rootfs: tuple[Path, dict[str, str]], private_tmp: Path
) -> None:
    from sealpod.errors import ConfigError
    from sealpod.runtime import Sandbox, run_shielded

    root, trusted = rootfs
    sandbox = Sandbox(argv=["/bin/sh", "-c", "exit 0"], tmpfs=["/not-a-mount-point"])
    with pytest.raises(ConfigError, match="not-a-mount-point"):
        run_shielded(make_policy(root, trusted), sandbox)
    assert os.listdir(private_tmp) == []
    assert not any(str(private_tmp) in line for line in _shield_mounts())
