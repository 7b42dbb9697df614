"""The sandbox: an unmodified program run by bubblewrap with the shield as its root.

:meth:`Sandbox.run` starts ``bwrap`` with new mount, pid, ipc, uts and cgroup namespaces, the
root directory (normally a mounted :class:`~sealpod.runtime.shield.Shield`) bound as ``/``, a
fresh ``/proc``, a minimal ``/dev``, only the given environment, the given working directory and
user, and (by default) the host's network so services can listen on host ports.

Decisions worth knowing:

* **Options travel over a memfd** (``bwrap --args FD``), not the command line, so environment
  values (secrets delivered at activation) never show in ``/proc/PID/cmdline``, which any host
  user can read. Only the application's own argv is on bwrap's command line.
* **User.** Running as root with the image's user 0:0, bwrap runs without a user namespace and
  the application keeps Docker's default capability set (everything else is dropped). For any
  other user, bwrap runs *as that user* (root drops to it before exec) with ``--unshare-user
  --uid U --gid G``, so the application's host uid is U and files it creates through the shield
  are owned by U. A non-root caller gets ``--unshare-user`` mapping its own uid to U.
* **Signals.** SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 received by the runtime (in
  the main thread) are forwarded to the application process itself (bwrap's pid-1 reaper does not
  forward signals; its host pid comes from ``--json-status-fd``). After a forwarded SIGTERM or
  SIGINT, the application gets ``stop_timeout`` seconds before bwrap is killed, which kills the
  whole pid namespace (``--die-with-parent``). ``--new-session`` always: the application cannot
  push input into the runtime's terminal (TIOCSTI), and terminal signals reach it through the
  forwarding.
* **Environment.** ``--clearenv`` and then only the given variables; bubblewrap itself adds
  ``PWD`` (the working directory) after ``--chdir``, as a shell would.
* **Exit status.** The application's exit code passes through; killed by signal N gives 128+N.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from sealpod.errors import ConfigError, EnvironmentUnavailableError

if TYPE_CHECKING:
    import subprocess

_logger = logging.getLogger(__name__)

#: Signals the runtime passes on to the application.
FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)

#: Docker's default capabilities, kept when the application runs as real root.
DEFAULT_ROOT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

_BWRAP_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


@dataclass(frozen=True)
class SandboxUser:
    """The numeric user and group the application runs as."""

    uid: int
    gid: int

    @classmethod
    def parse(cls, spec: str) -> SandboxUser:
        """Parse ``"UID:GID"`` or ``"UID"`` (then GID = UID).

        Raises:
            ConfigError: not numeric or out of range.
        """
        uid_s, _, gid_s = spec.partition(":")
        try:
            uid = int(uid_s)
            gid = int(gid_s) if gid_s else uid
        except ValueError:
            raise ConfigError(f"user: {spec!r} is not UID[:GID] (numeric)") from None
        if not (0 <= uid < 2**32 - 1 and 0 <= gid < 2**32 - 1):
            raise ConfigError(f"user: {spec!r} is out of range")
        return cls(uid, gid)


@dataclass(frozen=True)
class Bind:
    """An extra bind mount: host ``source`` at ``target`` in the sandbox."""

    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True, kw_only=True)
class Sandbox:
    """One run of a program in bubblewrap. ``env`` is hidden from ``repr`` (it may hold secrets).

    Raises:
        ConfigError: an empty argv, or a relative ``cwd``, tmpfs or bind target.
    """

    argv: Sequence[str]
    root: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    cwd: str = "/"
    user: SandboxUser = SandboxUser(0, 0)
    hostname: str = "sealpod"
    binds: Sequence[Bind] = ()
    tmpfs: Sequence[str] = ()
    share_net: bool = True
    stop_timeout: float = 10.0
    bwrap: str = "bwrap"

    def __post_init__(self) -> None:
        if not self.argv:
            raise ConfigError("sandbox: argv is empty")
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", dict(self.env))
        for what, path in (
            ("cwd", self.cwd),
            *(("tmpfs", t) for t in self.tmpfs),
            *(("binds", b.target) for b in self.binds),
        ):
            if not path.startswith("/"):
                raise ConfigError(f"sandbox: {what}: {path!r} is not an absolute path")
        for key in self.env:
            if not key or "=" in key or "\0" in key:
                raise ConfigError(f"sandbox: env: {key!r} is not a variable name")

    # -- the command line ---------------------------------------------------------------

    def _runs_as(self) -> SandboxUser | None:
        """The host identity bwrap itself must run as (None: this process's own)."""
        if os.geteuid() == 0 and self.user != SandboxUser(0, 0):
            return self.user
        return None

    def options(self) -> list[str]:
        """bwrap's options (everything before ``--``), as passed through ``--args``.

        Raises:
            ConfigError: ``root`` is not set.
        """
        args = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup"]
        if not self.share_net:
            args.append("--unshare-net")
        if os.geteuid() == 0 and self.user == SandboxUser(0, 0):
            args += ["--cap-drop", "ALL"]
            for cap in DEFAULT_ROOT_CAPABILITIES:
                args += ["--cap-add", cap]
        else:
            args += ["--unshare-user", "--uid", str(self.user.uid), "--gid", str(self.user.gid)]
        args += ["--die-with-parent", "--new-session"]
        if self.root is None:
            raise ConfigError("sandbox: no root directory (mount a shield first)")
        args += ["--bind", str(self.root), "/", "--proc", "/proc", "--dev", "/dev"]
        for target in self.tmpfs:
            args += ["--tmpfs", target]
        for bind in self.binds:
            args += ["--ro-bind" if bind.read_only else "--bind", bind.source, bind.target]
        args += ["--hostname", self.hostname, "--clearenv"]
        for key, value in self.env.items():
            args += ["--setenv", key, value]
        args += ["--chdir", self.cwd]
        return args

    def command(self, args_fd: int, status_fd: int) -> list[str]:
        """The full bwrap command line for options in ``args_fd`` and JSON status to ``status_fd``."""
        return [
            self.bwrap,
            "--args",
            str(args_fd),
            "--json-status-fd",
            str(status_fd),
            "--",
            *self.argv,
        ]

    def _check(self) -> str:
        # Imported when the sandbox starts (after the shield, which needs them too), not at
        # `sealpod run`'s start-up.
        import shutil

        program = shutil.which(self.bwrap)
        if program is None:
            raise EnvironmentUnavailableError(
                f"{self.bwrap} (bubblewrap) is not installed: the sandbox needs it"
            )
        if self.root is None:
            raise ConfigError("sandbox: no root directory (mount a shield first)")
        for target in ("/proc", "/dev", *self.tmpfs, *(b.target for b in self.binds)):
            if not (self.root / target.lstrip("/")).exists():
                raise ConfigError(
                    f"sandbox: {target} does not exist under the root {self.root}"
                    " (bubblewrap needs a mount point there)"
                )
        return program

    # -- running ------------------------------------------------------------------------

    def run(
        self,
        *,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
    ) -> int:
        """Run the program to completion and return its exit status (128+N if killed by N).

        Forwards the runtime's SIGTERM/SIGINT/... to the application while it runs (only when
        called from the main thread, where Python delivers signals).

        Raises:
            EnvironmentUnavailableError: bubblewrap is missing or cannot start.
            ConfigError: a mount point the sandbox needs is missing under ``root``.
        """
        program = self._check()
        args_fd = os.memfd_create("sealpod-bwrap-args", os.MFD_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        run = _Run(self)
        try:
            os.write(args_fd, b"".join(os.fsencode(a) + b"\0" for a in self.options()))
            os.lseek(args_fd, 0, os.SEEK_SET)
            argv = self.command(args_fd, status_w)
            argv[0] = program
            as_user = self._runs_as()
            import subprocess

            try:
                proc = subprocess.Popen(
                    argv,
                    pass_fds=(args_fd, status_w),
                    env=dict(_BWRAP_ENV),
                    stdin=stdin,
                    stdout=stdout,
                    stderr=stderr,
                    user=as_user.uid if as_user else None,
                    group=as_user.gid if as_user else None,
                    extra_groups=[] if as_user else None,
                )
            except OSError as exc:
                raise EnvironmentUnavailableError(f"cannot start bubblewrap: {exc}") from exc
            os.close(status_w)
            status_w = -1
            return run.supervise(proc, status_r)
        finally:
            os.close(args_fd)
            if status_w >= 0:
                os.close(status_w)
            os.close(status_r)


class _Run:
    """State of one :meth:`Sandbox.run`: the bwrap process, the app's pid, signal handling."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._proc: subprocess.Popen[bytes] | None = None
        self._init_pid: int | None = None
        self._pid_known = threading.Event()
        self._escalation: threading.Timer | None = None

    def _read_status(self, fd: int) -> None:
        with contextlib.suppress(OSError), open(fd, "rb", closefd=False) as stream:
            for line in stream:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if isinstance(doc, dict) and isinstance(doc.get("child-pid"), int):
                    self._init_pid = doc["child-pid"]
                    self._pid_known.set()

    def app_pid(self) -> int | None:
        """The application's host pid: the first child of bwrap's pid-1 reaper."""
        init = self._init_pid
        if init is None:
            return None
        try:
            with open(f"/proc/{init}/task/{init}/children", encoding="ascii") as f:
                children = f.read().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        target = self.app_pid()
        try:
            if target is not None:
                os.kill(target, signum)
            else:
                # Not started yet: stopping bwrap takes the whole sandbox down with it.
                proc.send_signal(signum)
        except ProcessLookupError:
            return
        _logger.info("forwarded signal %d to the sandboxed application", signum)
        if signum in (signal.SIGTERM, signal.SIGINT) and self._escalation is None:
            self._escalation = threading.Timer(self._sandbox.stop_timeout, self._kill)
            self._escalation.daemon = True
            self._escalation.start()

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _logger.warning(
                "the application did not stop within %.1f s; killing the sandbox",
                self._sandbox.stop_timeout,
            )
            proc.kill()

    def supervise(self, proc: subprocess.Popen[bytes], status_fd: int) -> int:
        self._proc = proc
        reader = threading.Thread(
            target=self._read_status, args=(status_fd,), name="sealpod-bwrap-status", daemon=True
        )
        reader.start()
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in FORWARDED_SIGNALS:
                previous[signum] = signal.signal(signum, self._forward)
        try:
            returncode = proc.wait()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            if self._escalation is not None:
                self._escalation.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=5)
        return 128 - returncode if returncode < 0 else returncode
