"""The start-up file hint: a program's executable, ELF interpreter and libraries, or a script's
interpreter, read from an untrusted tree without trusting it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sealpod.runtime._elf import startup_files


def _host_elf() -> str:
    for name in ("ls", "env", "sh"):
        found = shutil.which(name)
        if found and Path(os.path.realpath(found)).read_bytes()[:4] == b"\x7fELF":
            return os.path.realpath(found)
    pytest.skip("no dynamically linked ELF program found on this host")


def _ldd(program: str) -> list[str]:
    """The libraries the host's dynamic loader maps for ``program`` (the independent oracle)."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    return [m.group(1) for m in re.finditer(r"(/\S+) \(0x", out)]


def _trusted_view_of_host(paths: list[str]) -> tuple[dict[str, str], set[str]]:
    """Trusted entries as a package of the host would list them: every file reached, and
    every symbolic link met on the way (directories' links too)."""
    trusted: dict[str, str] = {}
    links: set[str] = set()
    for path in paths:
        resolved = "/"
        pending = [p for p in path.split("/") if p]
        hops = 0
        while pending and hops < 40:
            candidate = os.path.join(resolved, pending.pop(0))
            if os.path.islink(candidate):
                hops += 1
                links.add(candidate)
                trusted[candidate] = "0" * 64
                target = os.readlink(candidate)
                base = "/" if target.startswith("/") else resolved
                pending = [p for p in os.path.join(base, target).split("/") if p] + pending
                resolved = "/"
            else:
                resolved = candidate
        trusted[resolved] = "0" * 64
    return trusted, links


@pytest.mark.skipif(shutil.which("ldd") is None, reason="ldd (libc-bin) is needed as the oracle")
def test_a_dynamic_program_brings_its_interpreter_and_libraries() -> None:
    program = _host_elf()
    expected = _ldd(program)
    assert expected, "the host program should be dynamically linked"
    trusted, links = _trusted_view_of_host([program, *expected])
    found = startup_files("/", program, trusted, links)
    assert found[0] == program
    assert set(found) == {program, *(os.path.realpath(p) for p in expected)}


def test_a_script_brings_its_interpreter_through_trusted_links(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "run.sh").write_bytes(b"#!/bin/sh -e\necho hi\n")
    (tmp_path / "bin" / "dash").write_bytes(b"\x7fELF not really")
    (tmp_path / "bin" / "sh").symlink_to("dash")
    trusted = {p: "0" * 64 for p in ("/app/run.sh", "/bin/sh", "/bin/dash")}
    assert startup_files(tmp_path, "/app/run.sh", trusted, {"/bin/sh"}) == [
        "/app/run.sh",
        "/bin/dash",
    ]


def test_untrusted_paths_and_escaping_links_are_not_followed(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").write_bytes(b"#!/usr/bin/hidden\n")
    (tmp_path / "bin" / "out").symlink_to("/etc/passwd")
    trusted = {"/bin/tool": "0" * 64, "/bin/out": "0" * 64}
    assert startup_files(tmp_path, "/bin/tool", trusted, {"/bin/out"}) == ["/bin/tool"]
    assert startup_files(tmp_path, "/bin/out", trusted, {"/bin/out"}) == []
    assert startup_files(tmp_path, "/nowhere", trusted, set()) == []


@pytest.mark.parametrize("cut", [4, 20, 64, 200, 1000])
def test_a_truncated_or_garbled_elf_is_only_itself(tmp_path: Path, cut: int) -> None:
    real = Path(_host_elf()).read_bytes()[:4096]
    garbled = real[:cut] + bytes(range(256)) * 4
    (tmp_path / "prog").write_bytes(garbled)
    assert startup_files(tmp_path, "/prog", {"/prog": "0" * 64}, set()) == ["/prog"]
