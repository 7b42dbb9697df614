"""Reading an extracted root filesystem without ever leaving it.

The tree comes from untrusted layers. Symbolic links in it are resolved here as the container
would resolve them (absolute targets from the tree's root, ``..`` never above it), component
by component, so reading ``/etc/passwd`` or finding the entrypoint never follows a link onto
the host.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sealpod.errors import ConfigError, ManifestError
from sealpod.package.manifest import EnclaveUser, is_under

_MAX_LINKS = 40
#: Parts of the tree that are never trusted: the kernel's and the runtime's own mounts, and
#: sealpod's own files of an image that already is a package.
SKIPPED_TREES = ("/proc", "/sys", "/dev", "/.sealpod")
#: Password hashes are never part of a package's identity (nor visible to the application).
SHADOW_FILES = frozenset({"/etc/shadow", "/etc/gshadow"})


def is_shadow_file(path: str) -> bool:
    """``/etc/shadow``, ``/etc/gshadow`` and the ``/etc/NAME-`` backups shadow-utils keeps."""
    return path in SHADOW_FILES or (posixpath.dirname(path) == "/etc" and path.endswith("-"))


@dataclass(frozen=True)
class TreeFile:
    """A regular file or symbolic link found in the tree."""

    path: str  # as the application sees it
    host_path: str
    kind: str  # "file" or "symlink"
    size: int
    mode: int
    inode: tuple[int, int]
    target: bytes = b""  # symlinks only


def _normalise_glob(glob: str) -> str:
    return glob if glob.startswith("/") else "/" + glob


def walk_tree(
    root: Path, *, exclude: Sequence[str] = (), hidden: Sequence[str] = ()
) -> list[TreeFile]:
    """Every regular file and symbolic link below ``root``, sorted by path.

    Left out: :data:`SKIPPED_TREES`, shadow files, paths matching an ``exclude`` glob
    (``fnmatch`` against the absolute path, where ``*`` also matches ``/``; a matching
    directory excludes its subtree) and
    paths at or below one of ``hidden`` (tmpfs, volume and allowed paths).

    Raises:
        ConfigError: the tree cannot be read.
    """
    globs = [_normalise_glob(g) for g in exclude]
    found: list[TreeFile] = []

    def skipped(path: str) -> bool:
        if any(is_under(path, t) for t in SKIPPED_TREES) or any(is_under(path, h) for h in hidden):
            return True
        return any(fnmatch.fnmatchcase(path, g) for g in globs)

    # Iterative, so a maliciously deep tree cannot exhaust the interpreter's stack.
    stack: list[tuple[str, str]] = [(str(root), "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise ConfigError(f"cannot list {directory}: {exc.strerror or exc}") from exc
        subdirectories: list[tuple[str, str]] = []
        for entry in entries:
            path = f"{prefix}/{entry.name}"
            if skipped(path):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    subdirectories.append((entry.path, path))
                elif stat.S_ISREG(st.st_mode):
                    if not is_shadow_file(path):
                        found.append(
                            TreeFile(
                                path=path,
                                host_path=entry.path,
                                kind="file",
                                size=st.st_size,
                                mode=stat.S_IMODE(st.st_mode),
                                inode=(st.st_dev, st.st_ino),
                            )
                        )
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(os.fsencode(entry.path))
                    found.append(
                        TreeFile(
                            path=path,
                            host_path=entry.path,
                            kind="symlink",
                            size=len(target),
                            mode=stat.S_IMODE(st.st_mode),
                            inode=(st.st_dev, st.st_ino),
                            target=target,
                        )
                    )
            except OSError as exc:
                raise ConfigError(f"cannot read {entry.path}: {exc.strerror or exc}") from exc
        stack.extend(reversed(subdirectories))
    found.sort(key=lambda f: f.path)
    return found


def resolve_in_tree(root: Path, path: str) -> str | None:
    """Resolve ``path`` (absolute) inside the tree as the container would; ``None`` if absent.

    Returns the resolved absolute path with no symbolic link left in it.
    """
    pending = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        host = root.joinpath(*resolved, part)
        try:
            st = os.lstat(host)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                return None
            target = os.readlink(host)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        resolved.append(part)
    return "/" + "/".join(resolved)


def read_tree_file(root: Path, path: str, limit: int = 4 << 20) -> bytes | None:
    """The content of the regular file ``path`` in the tree (links resolved inside it).

    Raises:
        ConfigError: the file is larger than ``limit`` or cannot be read.
    """
    resolved = resolve_in_tree(root, path)
    if resolved is None:
        return None
    host = root / resolved.lstrip("/")
    try:
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            return None
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(f"{path} in the image is larger than {limit} bytes")
    return data


def _colon_table(data: bytes | None) -> Iterable[list[str]]:
    if data is None:
        return []
    text = data.decode("utf-8", errors="replace")
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(root: Path, spec: str) -> EnclaveUser:
    """``USER[:GROUP]`` (names or numbers, as an image's ``User``) -> numeric uid and gid.

    Names are looked up in the image's ``/etc/passwd`` and ``/etc/group``. Without a group,
    the user's primary group from ``/etc/passwd`` is used (0 for an unknown numeric uid).

    Raises:
        ManifestError: a name that the image does not define, or a bad number.
    """
    user, _, group = spec.strip().partition(":")
    if not user:
        user = "0"
    passwd = [row for row in _colon_table(read_tree_file(root, "/etc/passwd")) if len(row) >= 4]
    groups = [row for row in _colon_table(read_tree_file(root, "/etc/group")) if len(row) >= 3]

    def number(text: str, what: str) -> int:
        value = int(text)
        if not 0 <= value < 1 << 32:
            raise ManifestError(f"{text} is out of range", path=what)
        return value

    if user.isdigit():
        uid = number(user, "user")
        primary = next((row[3] for row in passwd if row[2] == user), "0")
    else:
        row = next((r for r in passwd if r[0] == user), None)
        if row is None:
            raise ManifestError(f"user {user!r} is not in the image's /etc/passwd", path="user")
        uid, primary = number(row[2], "user"), row[3]
    if not group:
        gid = number(primary, "user") if primary.isdigit() else 0
    elif group.isdigit():
        gid = number(group, "user")
    else:
        grow = next((r for r in groups if r[0] == group), None)
        if grow is None:
            raise ManifestError(f"group {group!r} is not in the image's /etc/group", path="user")
        gid = number(grow[2], "user")
    return EnclaveUser(uid=uid, gid=gid)


_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def find_executable(root: Path, name: str, env_path: str | None, working_dir: str) -> str:
    """The absolute path (as the image sees it) a container engine would exec for ``name``.

    A name with a ``/`` is taken relative to the working directory; a bare name is looked up
    in ``PATH`` (the image's, or the usual default). The path itself is returned (a symbolic
    link stays a link); it must resolve to a regular, executable file inside the tree.

    Raises:
        ManifestError: nothing executable is found.
    """
    if "/" in name:
        candidates = [posixpath.normpath(posixpath.join(working_dir, name))]
    else:
        directories = (env_path if env_path is not None else _DEFAULT_PATH).split(":")
        candidates = [
            posixpath.normpath(posixpath.join("/", d, name))
            for d in directories
            if d.startswith("/")
        ]
    for candidate in candidates:
        resolved = resolve_in_tree(root, candidate)
        if resolved is None:
            continue
        try:
            st = os.lstat(root / resolved.lstrip("/"))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return candidate
    raise ManifestError(f"{name!r} is not an executable file in the image", path="argv[0]")
