"""`sealpod run` pieces that need no sandbox: --publish, settings, the Gramine command plan."""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import pytest

from sealpod.cli import main
from sealpod.errors import ConfigError, EnvironmentUnavailableError
from sealpod.runtime._run_gramine import (
    WORK_MOUNT,
    check_gramine_environment,
    gramine_launch,
)
from sealpod.runtime.run import (
    PortMapping,
    RunSettings,
    _check_port_free,
    default_instance,
    parse_publish,
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("8443:8443", PortMapping(8443, 8443)),
        ("80", PortMapping(80, 80)),
        ("53/tcp", PortMapping(53, 53)),
    ],
)
def test_publish_specs(spec: str, expected: PortMapping) -> None:
    assert parse_publish(spec) == expected


@pytest.mark.parametrize("spec", ["8080:80", "0:0", "70000", "a:b", "1:2:3", ""])
def test_bad_or_mapped_publish_is_refused(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_publish(spec)


def test_publish_of_a_busy_port_is_refused() -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))  # noqa: S104
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match="already in use"):
            _check_port_free(PortMapping(port, port))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"coordinator": "https://127.0.0.1:1"},  # no root, no service
        {"coordinator": "https://127.0.0.1:1", "coordinator_root": Path("r.pem")},  # no service
        {"coordinator": "http://127.0.0.1:1", "coordinator_root": Path("r"), "service": "s"},
        {"service": "web"},  # service without a coordinator
        {"tee": "sev"},
    ],
)
def test_inconsistent_run_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RunSettings(package=Path("p"), **kwargs)  # type: ignore[arg-type]


def test_gramine_command_line(tmp_path: Path) -> None:
    rootfs, work, key = tmp_path / "rootfs", tmp_path / "work", tmp_path / "key.pem"
    launch = gramine_launch(rootfs=rootfs, work_dir=work, signing_key=key, argv=["--port", "1"])
    assert launch.manifest_path == work / "entrypoint.manifest"
    assert launch.sign == (
        "gramine-sgx-sign",
        "--manifest", f"{work}/entrypoint.manifest",
        "--output", f"{work}/entrypoint.manifest.sgx",
        "--key", str(key),
    )  # fmt: skip
    run = list(launch.run)
    assert run[0] == "bwrap"
    # The rootfs is / (the manifest's file: URIs are the application's paths) ...
    assert run[run.index("--bind") : run.index("--bind") + 3] == ["--bind", str(rootfs), "/"]
    # ... with the SGX devices, the work directory as cwd, then gramine-sgx and the arguments.
    assert ["--dev-bind-try", "/dev/sgx_enclave", "/dev/sgx_enclave"] == run[
        run.index("/dev/sgx_enclave") - 1 : run.index("/dev/sgx_enclave") + 2
    ]
    assert run[run.index("--chdir") + 1] == WORK_MOUNT
    assert run[run.index("--") + 1 :] == ["gramine-sgx", "entrypoint", "--port", "1"]


def test_gramine_without_gramine_sgx_is_an_environment_error() -> None:
    with pytest.raises(EnvironmentUnavailableError, match="gramine-sgx"):
        check_gramine_environment(which=lambda _name: None)


def test_gramine_without_sgx_device_is_an_environment_error(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentUnavailableError, match="sgx_enclave"):
        check_gramine_environment(
            which=lambda _name: "/usr/bin/gramine-sgx", devices=(str(tmp_path / "sgx_enclave"),)
        )


def test_cli_run_with_tee_gramine_exits_3_without_sgx(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.path.exists("/dev/sgx_enclave") and shutil.which("gramine-sgx"):
        pytest.skip("this machine has SGX and Gramine")
    with pytest.raises(SystemExit) as exited:
        main(["run", str(tmp_path / "pkg"), "--tee", "gramine"])
    assert exited.value.code == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")


def test_cli_run_bad_publish_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", str(tmp_path / "pkg"), "--publish", "8080:80"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "port mapping" in err


def test_cli_run_coordinator_without_root_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", str(tmp_path / "pkg"), "--coordinator", "https://127.0.0.1:1"])
    assert exited.value.code == 1
    assert "--coordinator-root" in capsys.readouterr().err


def test_cli_run_uses_the_root_sealpod_verify_pinned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    url = "https://127.0.0.1:1"
    args = ["run", str(tmp_path / "pkg"), "--coordinator", url, "--service", "web"]
    with pytest.raises(SystemExit):
        main(args)
    assert "no pinned root for https://127.0.0.1:1" in capsys.readouterr().err
    # Where `sealpod verify` saves it (issue 3 §4: the user's config dir).
    pinned = tmp_path / "config" / "sealpod" / "coordinators" / "127.0.0.1_1.pem"
    pinned.parent.mkdir(parents=True)
    pinned.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "no pinned root" not in err and err.startswith("error: ")  # got to the package


def test_default_instance_is_stable_and_valid_for_the_coordinator() -> None:
    first = default_instance("web")
    assert first == default_instance("web") and first.endswith("-web")
    # The coordinator's instance id pattern (issue 3 activation API).
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.~-]{0,127}", first)
