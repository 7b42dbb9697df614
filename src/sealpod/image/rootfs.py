"""Cached Debian root filesystems built with debootstrap, for tests and the demo.

A root filesystem is identified by a name and a hash of what went into it (suite, variant,
package list, recipe version); it lives under ``$SEALPOD_CACHE_DIR/rootfs/<name>-<hash>``.

Invariants:

* a cache entry is either absent or complete: it is built in a temporary directory beside its
  final place and renamed into place atomically (``rename(2)`` on one filesystem);
* two concurrent builds of the same entry do not collide: the builder holds an exclusive
  ``flock(2)`` on ``<name>-<hash>.lock`` and re-checks the cache once it has the lock;
* the Debian mirror comes from the host's APT configuration (``/etc/apt/sources.list`` and
  ``/etc/apt/sources.list.d/*.sources``/``*.list``), never from a host name written here;
* nothing stays mounted below a failed build before it is removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sealpod.errors import ConfigError, EnvironmentUnavailableError
from sealpod.image._cachedir import sealpod_cache_dir as sealpod_cache_dir
from sealpod.image.model import Compression, ImageConfig
from sealpod.image.write import layer_from_directory, write_docker_archive, write_oci_layout

_logger = logging.getLogger(__name__)

#: Bump when the build recipe changes in a way that changes the produced tree.
_RECIPE_VERSION = 2

_APT_ROOT = Path("/etc/apt")


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` source from the host's APT configuration."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None


def _parse_one_line_sources(text: str) -> Iterator[AptSource]:
    # sources.list(5), one-line style: "deb [options] uri suite [component...]".
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[0] != "deb":
            continue
        words = words[1:]
        signed_by: str | None = None
        if words and words[0].startswith("["):
            options: list[str] = []
            while words:
                word = words.pop(0)
                options.append(word.strip("[]"))
                if word.endswith("]"):
                    break
            for option in options:
                key, _, value = option.partition("=")
                if key == "signed-by" and value:
                    signed_by = value
        if len(words) < 2:
            continue
        yield AptSource(words[0], (words[1],), tuple(words[2:]), signed_by)


def _parse_deb822_sources(text: str) -> Iterator[AptSource]:
    # sources.list(5), deb822 style: stanzas separated by blank lines, "Key: value" fields,
    # continuation lines start with whitespace, '#' lines are comments.
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last_key: str | None = None
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, last_key = {}, None
            continue
        if raw[0] in " \t" and last_key is not None:
            current[last_key] += "\n" + raw.strip()
            continue
        key, sep, value = raw.partition(":")
        if not sep:
            continue
        last_key = key.strip().lower()
        current[last_key] = value.strip()
    for stanza in stanzas:
        if "deb" not in stanza.get("types", "").split():
            continue
        if stanza.get("enabled", "yes").lower() == "no":
            continue
        signed_by = stanza.get("signed-by") or None
        if signed_by is not None and "\n" in signed_by:
            signed_by = None  # an inline key block; debootstrap cannot take it as a path
        for uri in stanza.get("uris", "").split():
            yield AptSource(
                uri,
                tuple(stanza.get("suites", "").split()),
                tuple(stanza.get("components", "").split()),
                signed_by,
            )


def host_apt_sources(apt_root: Path = _APT_ROOT) -> list[AptSource]:
    """Every ``deb`` source the host's APT configuration enables, in APT's reading order."""
    files: list[Path] = []
    main_list = apt_root / "sources.list"
    if main_list.is_file():
        files.append(main_list)
    parts = apt_root / "sources.list.d"
    if parts.is_dir():
        # apt reads only *.list and *.sources, in alphabetical order.
        files.extend(
            sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
        )
    sources: list[AptSource] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            _logger.warning("cannot read %s: %s", path, exc)
            continue
        parser = _parse_deb822_sources if path.suffix == ".sources" else _parse_one_line_sources
        sources.extend(parser(text))
    return sources


def debian_mirror(suite: str, apt_root: Path = _APT_ROOT) -> AptSource:
    """The host's APT source that serves ``suite`` with the ``main`` component.

    Raises:
        EnvironmentUnavailableError: no enabled APT source serves that suite.
    """
    for source in host_apt_sources(apt_root):
        if suite in source.suites and "main" in source.components:
            if source.uri.startswith(("http://", "https://", "file:/")):
                return source
    raise EnvironmentUnavailableError(
        f"no APT source on this host serves Debian {suite!r} main "
        f"(looked in {apt_root}/sources.list and {apt_root}/sources.list.d)"
    )


def rootfs_cache_key(suite: str, packages: Sequence[str], variant: str = "minbase") -> str:
    """Hex digest naming a root filesystem built from these inputs."""
    document = {
        "recipe": _RECIPE_VERSION,
        "suite": suite,
        "variant": variant,
        "packages": sorted(set(packages)),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def _check_name(name: str, what: str) -> None:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-+_")
    if not name or name[0] in ".-" or not set(name.lower()) <= allowed:
        raise ConfigError(f"{what}: {name!r} is not a valid name")


def _mounts_below(path: Path) -> list[Path]:
    # /proc/self/mountinfo field 5 is the mount point, with spaces etc. octal-escaped.
    found: list[Path] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    prefix = str(path).rstrip("/") + "/"
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape")
        if point == str(path) or point.startswith(prefix):
            found.append(Path(point))
    return found


def _remove_build_dir(path: Path) -> None:
    # debootstrap mounts /proc and /sys inside the target; a failed run can leave them there,
    # and removing the tree through a live /sys or /proc mount must never happen.
    for mount in sorted(_mounts_below(path), key=lambda p: len(p.parts), reverse=True):
        result = subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)
        if result.returncode != 0:
            _logger.error("cannot unmount %s; leaving %s in place", mount, path)
            return
    if _mounts_below(path):
        _logger.error("mounts remain below %s; leaving it in place", path)
        return
    shutil.rmtree(path, ignore_errors=True)


def _strip(rootfs: Path) -> None:
    # Downloaded packages, package caches and lists are large and not needed at run time.
    # Files go; the directories stay (apt expects archives/partial and lists/partial).
    for relative in ("var/cache/apt", "var/lib/apt/lists"):
        directory = rootfs / relative
        if not directory.is_dir() or directory.is_symlink():
            continue
        for dirpath, _dirnames, filenames in os.walk(directory):
            for name in filenames:
                os.unlink(os.path.join(dirpath, name))
    leftover = rootfs / "debootstrap"
    if leftover.is_dir() and not leftover.is_symlink():
        shutil.rmtree(leftover)


def build_debian_rootfs(
    name: str,
    packages: Sequence[str],
    cache_dir: Path | None = None,
    suite: str = "bookworm",
    *,
    variant: str = "minbase",
    apt_root: Path = _APT_ROOT,
    timeout: float = 3600.0,
) -> Path:
    """A Debian root filesystem with ``packages``, built once and cached.

    Args:
        name: a short name for the cache entry (``[a-z0-9.+_-]``).
        packages: extra Debian packages (``debootstrap --include``).
        cache_dir: the cache root; default :func:`sealpod_cache_dir`.
        suite: the Debian suite (``bookworm``).
        variant: the debootstrap variant.
        apt_root: where the host's APT configuration lives (for the mirror).
        timeout: seconds debootstrap may take.

    Returns:
        The directory holding the root filesystem (do not modify it; copy it).

    Raises:
        ConfigError: a bad name, suite or package name.
        EnvironmentUnavailableError: not root, debootstrap missing, no mirror configured, or
            debootstrap failed.
    """
    _check_name(name, "rootfs name")
    _check_name(suite, "suite")
    for package in packages:
        _check_name(package, "package")
    root = (cache_dir if cache_dir is not None else sealpod_cache_dir()) / "rootfs"
    final = root / f"{name}-{rootfs_cache_key(suite, packages, variant)}"
    if final.is_dir():
        return final
    if os.geteuid() != 0:
        raise EnvironmentUnavailableError(
            "building a Debian root filesystem needs root (debootstrap); run as root"
        )
    debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin")
    if debootstrap is None:
        raise EnvironmentUnavailableError(
            "debootstrap is not installed (scripts/bootstrap.sh installs it)"
        )
    source = debian_mirror(suite, apt_root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{final.name}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():  # someone else built it while we waited
            return final
        # Holding the lock, any build directory of this entry is a leftover of a killed run.
        for stale in root.glob(f".build-{final.name}-*"):
            _logger.info("removing %s, left by an interrupted build", stale)
            _remove_build_dir(stale)
        build_dir = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=root))
        try:
            command = [debootstrap, f"--variant={variant}"]
            if packages:
                command.append("--include=" + ",".join(sorted(set(packages))))
            if source.signed_by:
                command.append(f"--keyring={source.signed_by}")
            command += [suite, str(build_dir / "rootfs"), source.uri]
            _logger.info("building %s with debootstrap from %s (takes minutes)", final, source.uri)
            try:
                result = subprocess.run(
                    command, check=False, capture_output=True, text=True, timeout=timeout
                )
            except subprocess.TimeoutExpired as exc:
                raise EnvironmentUnavailableError(
                    f"debootstrap did not finish in {timeout:.0f} s"
                ) from exc
            if result.returncode != 0:
                tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
                raise EnvironmentUnavailableError(
                    f"debootstrap failed with exit code {result.returncode}: {tail}"
                )
            if _mounts_below(build_dir):
                raise EnvironmentUnavailableError(f"debootstrap left mounts below {build_dir}")
            _strip(build_dir / "rootfs")
            os.rename(build_dir / "rootfs", final)
        finally:
            _remove_build_dir(build_dir)
    _logger.info("built %s", final)
    return final


def rootfs_to_image(
    rootfs: Path,
    config: ImageConfig,
    dest: Path,
    *,
    image_format: Literal["oci", "docker-archive"] = "oci",
    tag: str = "latest",
    compression: Compression = "gzip",
) -> Path:
    """Pack a root filesystem as a one-layer image (for tests and the demo).

    Owners, modes and mtimes are kept from the tree (so the same tree gives the same layer);
    device nodes and FIFOs are left out.

    Args:
        rootfs: the root directory (e.g. from :func:`build_debian_rootfs`).
        config: how to run the image.
        dest: the OCI layout directory or the docker-archive file to create.
        image_format: ``oci`` or ``docker-archive``.
        tag: the ref name (OCI) or ``sealpod/NAME:TAG`` repo tag (docker-archive).
        compression: the layer compression for OCI (docker-archive layers are plain tars).

    Returns:
        ``dest``.

    Raises:
        ConfigError: the tree cannot be read or ``dest`` cannot be written.
    """
    with tempfile.TemporaryDirectory(prefix=".sealpod-layer-", dir=dest.parent) as work:
        layer = layer_from_directory(
            rootfs,
            Path(work),
            mtime=None,
            owner=None,
            compression=compression if image_format == "oci" else "none",
        )
        if image_format == "oci":
            write_oci_layout(dest, config, [layer], tag=tag)
        else:
            write_docker_archive(dest, config, [layer], repo_tags=[f"sealpod/{rootfs.name}:{tag}"])
    return dest
