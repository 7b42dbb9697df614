"""`sealpod run`'s start-up does not pay for what it does not use (issue 4, bench_startup).

Timings are noisy on shared machines, so the budget is pinned by what gets imported: in a fresh
interpreter, the CLI with the ``run`` command loaded, and a package opened and verified, must
not have imported the heavy libraries (HTTP, web framework, pydantic, cryptography, FUSE,
templates, terminal UI) nor the parts of sealpod that only building, activation or other
commands need.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sealpod.image import ImageConfig, rootfs_to_image
from sealpod.package import build_package
from sealpod.sgx import EnclaveSigningKey

#: Never imported before the shield starts (the shield and activation load their own).
HEAVY = (
    "httpx",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "cryptography",
    "trio",
    "pyfuse3",
    "jinja2",
    "rich",
    "yaml",
    "psycopg",
    "platformdirs",  # the default cache directory is found without it (Linux)
)
#: Parts of sealpod the run path without a coordinator does not need.
NOT_NEEDED = (
    # The SIGSTRUCT check (sealpod.sgx._check) is on the run path; signing and keys are not.
    "sealpod.sgx.keys",
    "sealpod.sgx.sigstruct",
    "sealpod.sgx.measurement",
    "sealpod.tee",
    "sealpod.coordinator",
    "sealpod.attestation",
    "sealpod.manifest",
    "sealpod.pki",
    "sealpod.encfs",
    "sealpod.package.manifest",
    "sealpod.package.build",
    "sealpod.image.write",
    "sealpod.image.rootfs",
    "sealpod.image.extract",
    "sealpod.runtime.shield",
    "sealpod.runtime._run_gramine",
    "sealpod.cli._common",
)


def _modules_after(code: str, tmp_path: Path) -> set[str]:
    script = tmp_path / "probe.py"
    script.write_text(f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))\n")
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home")},
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def _offenders(modules: set[str]) -> list[str]:
    return sorted(
        name
        for name in modules
        for banned in (*HEAVY, *NOT_NEEDED)
        if name == banned or name.startswith(banned + ".")
    )


def test_loading_the_run_command_imports_nothing_heavy(tmp_path: Path) -> None:
    modules = _modules_after(
        "import sealpod.cli, sealpod.cli.run\n"
        "sealpod.cli.cli.get_command(None, 'run')",  # the lazy group loads the command
        tmp_path,
    )
    assert "sealpod.runtime.run" in modules  # the probe did load the run path
    assert _offenders(modules) == []


def test_run_help_through_the_entry_point_imports_nothing_heavy(tmp_path: Path) -> None:
    modules = _modules_after(
        "import sealpod.cli\n"
        "try:\n    sealpod.cli.main(['run', '--help'])\nexcept SystemExit:\n    pass",
        tmp_path,
    )
    assert "sealpod.cli.run" in modules
    assert _offenders(modules) == []


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("startup")
    rootfs = base / "rootfs"
    (rootfs / "usr/bin").mkdir(parents=True)
    (rootfs / "usr/bin/app").write_bytes(b"#!/bin/sh\necho hi\n")
    (rootfs / "usr/bin/app").chmod(0o755)
    (rootfs / "etc").mkdir()
    (rootfs / "etc/hostname").write_text("box\n")
    config = ImageConfig(entrypoint=("/usr/bin/app",), env=("PATH=/usr/bin",))
    image = rootfs_to_image(rootfs, config, base / "oci")
    out = base / "package"
    key = EnclaveSigningKey.generate()
    build_package(f"oci:{image}", out, key, date=dt.date(2025, 1, 1))
    return out


def test_verifying_a_package_imports_neither_cryptography_nor_pydantic(
    package: Path, tmp_path: Path
) -> None:
    modules = _modules_after(
        "from sealpod.package.package import open_package, package_rootfs_layers, "
        "verify_package\n"
        "from sealpod.image.cache import extract_cached\n"
        f"package = open_package({str(package)!r})\n"
        "info = verify_package(package)\n"
        "assert info.trusted_files >= 2, info\n"
        "extract_cached(package_rootfs_layers(package).image)\n",
        tmp_path,
    )
    assert "sealpod.image.extract" in modules  # the probe unpacked (a cache miss) ...
    assert _offenders(modules) == ["sealpod.image.extract"]  # ... and needed nothing else
