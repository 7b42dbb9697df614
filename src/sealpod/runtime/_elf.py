"""Which trusted files a program's start will open first: a hint for verifying them early.

Starting a dynamically linked program opens its executable, the ELF interpreter named in
``PT_INTERP`` and, recursively, the libraries named by ``DT_NEEDED``; a script starts its
``#!`` interpreter. The shield can hash those files on a spare core while the sandbox is still
being set up, so the program's first opens find them verified (:class:`~sealpod.runtime.shield.Shield`
``preverify``).

This is only a *hint*: the files are read from the untrusted backing tree and parsed without
trusting them (every offset is bounds-checked, every failure ends the search quietly), and the
result changes nothing but *when* the usual whole-file check of a trusted file runs. A wrong or
empty answer costs time, never safety.
"""

from __future__ import annotations

import os
import posixpath
import struct
from collections.abc import Callable, Collection, Mapping

__all__ = ["startup_files"]

_MAX_FILES = 64
_MAX_LINKS = 16
_MAX_READ = 1 << 20
#: Where the dynamic loader looks when no RUNPATH says otherwise (Debian multiarch first).
_DEFAULT_DIRS = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
)
_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NEEDED, _DT_STRTAB, _DT_STRSZ, _DT_RPATH, _DT_RUNPATH = 1, 5, 10, 15, 29


def startup_files(
    root: str | os.PathLike[str],
    entrypoint: str,
    trusted: Mapping[str, str],
    links: Collection[str],
) -> list[str]:
    """The trusted regular files starting ``entrypoint`` opens first, in that order.

    ``root`` is the backing tree, ``trusted`` the trusted paths (path -> hash) and ``links``
    those of them that are symbolic links (followed inside the tree).
    """
    base = os.fsencode(os.fspath(root))
    found: list[str] = []
    queue = [entrypoint]
    seen: set[str] = set()
    while queue and len(found) < _MAX_FILES:
        path = _resolve(base, queue.pop(0), trusted, links)
        if path is None or path in seen:
            continue
        seen.add(path)
        found.append(path)
        head, interp, needed, search = _deps(base + os.fsencode(path))
        if head.startswith(b"#!"):
            line = head[2:].split(b"\n", 1)[0].split()
            if line:
                queue.append(os.fsdecode(line[0]))
        else:
            if interp:
                queue.append(interp)
            dirs = [d for d in search if d.startswith("/")] + list(_DEFAULT_DIRS)
            for name in needed:
                if "/" in name:
                    queue.append(name)
                    continue
                for directory in dirs:
                    candidate = posixpath.join(directory, name)
                    if _resolve(base, candidate, trusted, links) is not None:
                        queue.append(candidate)
                        break
    return found


def _resolve(
    base: bytes, path: str, trusted: Mapping[str, str], links: Collection[str]
) -> str | None:
    """``path`` with trusted symbolic links followed (the file's own and its directories',
    as in merged-/usr images), if it ends at a trusted regular file."""
    for _ in range(_MAX_LINKS):
        path = posixpath.normpath(path)
        if path in trusted and path not in links:
            return path
        parts = path.split("/")
        for cut in range(2, len(parts) + 1):
            prefix = "/".join(parts[:cut])
            if prefix in links:
                try:
                    target = os.fsdecode(os.readlink(base + os.fsencode(prefix)))
                except OSError:
                    return None
                path = posixpath.join(posixpath.dirname(prefix), target, *parts[cut:])
                break
        else:
            return None
    return None


_Reader = Callable[[int, int], bytes]


def _open_reader(path: bytes) -> tuple[int, _Reader] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    return fd, lambda offset, size: os.pread(fd, min(size, _MAX_READ), offset)


def _deps(path: bytes) -> tuple[bytes, str, list[str], list[str]]:
    """(first bytes, PT_INTERP, DT_NEEDED names, RUNPATH/RPATH directories) of ``path``."""
    opened = _open_reader(path)
    if opened is None:
        return b"", "", [], []
    fd, read = opened
    try:
        head = read(0, 4096)
        if head.startswith(b"\x7fELF"):
            return (head, *_elf_deps(head, read))
        return head, "", [], []
    except OSError:
        return b"", "", [], []
    finally:
        os.close(fd)


def _elf_deps(head: bytes, read: _Reader) -> tuple[str, list[str], list[str]]:
    """PT_INTERP, DT_NEEDED names and RUNPATH/RPATH directories of a 64-bit little-endian
    ELF file (empty when it is anything else or malformed)."""
    try:
        if head[4] != 2 or head[5] != 1:  # ELFCLASS64, ELFDATA2LSB
            return "", [], []
        (phoff,) = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        table = read(phoff, phentsize * min(phnum, 64))
        interp = ""
        loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
        dynamic: tuple[int, int] | None = None
        for i in range(min(phnum, 64)):
            p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(
                "<IIQQQQ", table, i * phentsize
            )
            if p_type == _PT_INTERP:
                interp = read(p_offset, min(p_filesz, 4096)).split(b"\0", 1)[0].decode()
            elif p_type == _PT_LOAD:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == _PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
        if dynamic is None:
            return interp, [], []
        raw = read(dynamic[0], min(dynamic[1], 64 << 10))
        entries: list[tuple[int, int]] = []
        for at in range(0, len(raw) - 15, 16):
            tag, value = struct.unpack_from("<qQ", raw, at)
            if tag == 0:
                break
            entries.append((tag, value))
        strtab_vaddr = next((v for t, v in entries if t == _DT_STRTAB), None)
        strsz = next((v for t, v in entries if t == _DT_STRSZ), 0)
        if strtab_vaddr is None:
            return interp, [], []
        strtab = next(
            (off + strtab_vaddr - va for va, off, size in loads if va <= strtab_vaddr < va + size),
            None,
        )
        if strtab is None or not 0 < strsz <= 1 << 20:
            return interp, [], []
        strings = read(strtab, strsz)

        def string(offset: int) -> str:
            return strings[offset : strings.index(b"\0", offset)].decode()

        needed = [string(v) for t, v in entries if t == _DT_NEEDED]
        search = [
            directory
            for t, v in entries
            if t in (_DT_RUNPATH, _DT_RPATH)
            for directory in string(v).split(":")
        ]
        return interp, needed, search
    except (IndexError, ValueError, UnicodeDecodeError, struct.error, OSError):
        return "", [], []
