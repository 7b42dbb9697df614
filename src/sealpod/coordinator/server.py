"""Serving the coordinator over HTTPS (uvicorn) with a certificate from its own root.

The TLS server certificate is issued at start by the coordinator root for the listen host (and,
for a wildcard listen address, for ``localhost``, the loopback addresses and the host name), so a
client that pinned the root after attesting the coordinator (:func:`sealpod.coordinator.client.
verify_coordinator`) trusts exactly this server. The private key is generated in memory and
loaded into the TLS context through an anonymous in-memory file (``memfd_create``): it never
reaches the host's disk.

Workers: with ``workers > 1`` the server binds its socket once and runs that many processes on
it (this one plus ``workers - 1`` started with ``spawn``, which die with it), so the CPU-bound
parts of activations (quote verification, certificate signing, TLS, JSON) use every core. They
share everything through the sealed store: nonces are MACs under a key in the store and their
single use, ``max_instances`` and the audit chain are decided inside store write transactions,
which the database serialises across processes; each worker reloads the manifest and CA when
another one changed them. Each worker issues its own TLS certificate from the root (clients pin
the root). ``/metrics`` counts the worker that answers. A coordinator in recovery runs one
process: the recovery shares it collects live in its memory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import multiprocessing
import os
import signal
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import uvicorn
from cryptography.hazmat.primitives import serialization

from sealpod.coordinator.app import create_app
from sealpod.coordinator.service import Coordinator, CoordinatorState
from sealpod.coordinator.settings import CoordinatorSettings
from sealpod.errors import ConfigError, EnvironmentUnavailableError
from sealpod.pki import CertifiedKey, certificates_to_pem

__all__ = [
    "WORKERS_ENV",
    "CoordinatorServer",
    "load_credentials",
    "parse_listen",
    "server_names",
    "server_ssl_context",
]

_logger = logging.getLogger(__name__)

#: Environment variable giving the default number of worker processes (the CLI's
#: ``--workers`` reads the same variable).
WORKERS_ENV = "SEALPOD_WORKERS"
_PR_SET_PDEATHSIG = 1

_WILDCARDS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 (names of wildcard addresses)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> ``(host, port)``.

    Raises:
        ConfigError: not of that form or the port is out of range.
    """
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"listen address {value!r}: use HOST:PORT")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"listen address {value!r}: port out of range")
    return host, port


def server_names(host: str, extra: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses the server certificate covers.

    Raises:
        ConfigError: a name is neither a DNS name nor an IP address.
    """
    dns: list[str] = []
    ips: list[str] = []
    candidates = [host, *extra]
    if host in _WILDCARDS:
        candidates = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *extra]
    for name in candidates:
        if not name or name in _WILDCARDS:
            continue
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            if any(c in name for c in " /\\@:"):
                raise ConfigError(f"invalid server name {name!r}") from None
            dns.append(name.lower())
    return sorted(set(dns)), sorted(set(ips))


def server_ssl_context(credentials: CertifiedKey) -> ssl.SSLContext:
    """A TLS 1.2+ server context holding ``credentials`` (loaded from memory, not disk).

    Raises:
        EnvironmentUnavailableError: the platform has no ``memfd_create``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_credentials(context, credentials)
    return context


def load_credentials(context: ssl.SSLContext, credentials: CertifiedKey) -> None:
    """(Re)load the certificate and key of ``context``; later handshakes use them.

    Raises:
        EnvironmentUnavailableError: the platform has no ``memfd_create``.
    """
    pem = certificates_to_pem((credentials.certificate, *credentials.chain))
    key = credentials.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None:
        raise EnvironmentUnavailableError("memfd_create is needed to load the TLS key in memory")
    descriptor = memfd_create("sealpod-coordinator-tls", os.MFD_CLOEXEC)
    try:
        data = memoryview(pem + key)
        while data:
            written = os.write(descriptor, data)
            data = data[written:]
        context.load_cert_chain(f"/proc/self/fd/{descriptor}")
    finally:
        os.close(descriptor)


@dataclass
class CoordinatorServer:
    """A coordinator app with its HTTPS uvicorn server, ready to :meth:`run`."""

    coordinator: Coordinator
    server: uvicorn.Server
    credentials: CertifiedKey
    workers: int = 1
    server_names_extra: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        settings: CoordinatorSettings,
        *,
        host: str,
        port: int,
        server_names_extra: Sequence[str] = (),
        coordinator: Coordinator | None = None,
        log_level: str = "warning",
        workers: int | None = None,
    ) -> CoordinatorServer:
        """Open the coordinator, issue its TLS certificate and configure uvicorn.

        In recovery the TLS certificate is ephemeral and self-signed (the coordinator's quote
        binds it); once the state is recovered the server switches to a certificate of the root.
        ``workers`` (default: ``$SEALPOD_WORKERS``, else 1) is the number of serving processes
        (see the module docstring); a coordinator in recovery uses one.

        Raises:
            ConfigError: bad settings, server names or number of workers.
            EnvironmentUnavailableError: the TEE or the database is unavailable.
            VerificationError: the sealed state was tampered with.
        """
        count = _worker_count(workers)
        core = coordinator if coordinator is not None else Coordinator.open(settings)
        dns_names, ips = server_names(host, server_names_extra)
        credentials = core.issue_server_certificate(dns_names=dns_names, ip_addresses=ips)
        context = server_ssl_context(credentials)
        server_ref: list[CoordinatorServer] = []

        def switch_to_root() -> None:
            # Recovered: from now on serve a certificate of the (unsealed) root again.
            fresh = core.issue_server_certificate(dns_names=dns_names, ip_addresses=ips)
            load_credentials(context, fresh)
            if server_ref:
                server_ref[0].credentials = fresh
            _logger.warning("TLS now uses a certificate of the recovered coordinator root")

        core.on_unsealed(switch_to_root)

        def factory(
            _config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]
        ) -> ssl.SSLContext:
            return context

        config = uvicorn.Config(
            create_app(coordinator=core),
            host=host or "0.0.0.0",  # noqa: S104 (an explicit --listen choice)
            port=port,
            ssl_context_factory=factory,
            log_config=None,
            log_level=log_level,
            access_log=False,
            server_header=False,
        )
        built = cls(
            coordinator=core,
            server=uvicorn.Server(config),
            credentials=credentials,
            workers=count,
            server_names_extra=tuple(server_names_extra),
        )
        server_ref.append(built)
        return built

    @property
    def root_pem(self) -> bytes:
        """The coordinator root certificate (PEM).

        Raises:
            RequestRefusedError: ``recovery_mode`` while the state is sealed.
        """
        return self.coordinator.ca.root_certificate.public_bytes(serialization.Encoding.PEM)

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve until stopped (SIGINT/SIGTERM, or :meth:`stop` from another thread).

        Raises:
            EnvironmentUnavailableError: a worker process cannot be started.
        """
        config = self.server.config
        _logger.info("coordinator serving on https://%s:%s", config.host, config.port)
        if self.workers <= 1 or self.coordinator.state is CoordinatorState.RECOVERY:
            self.server.run(sockets=sockets)
            return
        # Without given sockets each process gets its own listening socket on the same port
        # (SO_REUSEPORT): the kernel spreads new connections evenly over the workers, whereas
        # one shared socket lets the least busy process accept whole bursts of connections.
        shared = sockets
        own: list[socket.socket] = []
        if shared is None:
            own = [_reuse_port_socket(config.host, config.port) for _ in range(self.workers)]
            sockets = [own[0]]
        context = multiprocessing.get_context("spawn")
        children = []
        try:
            for index in range(1, self.workers):
                child = context.Process(
                    target=_serve_worker,
                    args=(
                        self.coordinator.settings,
                        config.host,
                        config.port,
                        self.server_names_extra,
                        shared if shared is not None else [own[index]],
                        logging.getLogger().getEffectiveLevel(),
                        os.getpid(),
                    ),
                    name=f"sealpod-coordinator-worker-{index}",
                    daemon=True,
                )
                child.start()
                children.append(child)
            for passed in own[1:]:
                passed.close()  # the children have their copies
            _logger.info("coordinator running %d worker processes", self.workers)
            self.server.run(sockets=sockets)
        except OSError as exc:
            raise EnvironmentUnavailableError(f"cannot start a worker process: {exc}") from exc
        finally:
            for child in children:
                if child.pid is not None and child.is_alive():
                    with contextlib.suppress(OSError):
                        os.kill(child.pid, signal.SIGTERM)
            for child in children:
                child.join(timeout=20)
                if child.is_alive():
                    child.kill()
                    child.join()

    def stop(self) -> None:
        """Ask the server to stop (thread-safe)."""
        self.server.should_exit = True


def _worker_count(workers: int | None) -> int:
    if workers is None:
        text = os.environ.get(WORKERS_ENV, "").strip()
        if not text:
            return 1
        if not text.isdigit():
            raise ConfigError(f"{WORKERS_ENV}={text!r}: use a number of worker processes")
        workers = int(text)
    if not 1 <= workers <= 64:
        raise ConfigError(f"the number of workers must be 1..64, not {workers}")
    return workers


def _die_with_parent() -> None:
    # Linux prctl(PR_SET_PDEATHSIG, SIGTERM): a worker must not outlive the server that
    # started it (e.g. after a SIGKILL of the parent), or it would keep serving alone.
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _serve_worker(
    settings: CoordinatorSettings,
    host: str,
    port: int,
    server_names_extra: tuple[str, ...],
    sockets: list[socket.socket],
    log_level: int,
    parent: int,
) -> None:
    """A worker process: its own coordinator (and database connections) on the shared socket."""
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above took effect
        return
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    worker = CoordinatorServer.build(
        settings, host=host, port=port, server_names_extra=server_names_extra, workers=1
    )
    worker.server.run(sockets=sockets)


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` that other workers may bind too.

    Raises:
        EnvironmentUnavailableError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise EnvironmentUnavailableError(f"cannot listen on {host}:{port}: {exc}") from exc
    return sock
