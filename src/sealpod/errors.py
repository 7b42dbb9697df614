"""The one error hierarchy of sealpod.

Errors are split by who is at fault:

* untrusted evidence or data that fails a check -> :class:`VerificationError` (with a stable,
  machine-readable ``reason``) or :class:`QuoteFormatError` for bytes that do not even parse;
* bad user input or settings -> :class:`ConfigError` / :class:`ManifestError` (naming the field);
* the network -> :class:`NetworkError`;
* the machine lacks something (a device, a Debian package) -> :class:`EnvironmentUnavailableError`.

Messages never contain secret material. The CLI turns every :class:`SealpodError` into one line
on stderr and the exit code in :attr:`SealpodError.exit_code`.
"""

from __future__ import annotations


class SealpodError(Exception):
    """Root of every error sealpod raises on purpose."""

    #: Exit code the CLI uses for this error (STYLE.md: 1 rejected/failed, 3 environment).
    exit_code: int = 1

    def diagnostics(self) -> str:
        """A longer, human-oriented explanation; defaults to the message."""
        return str(self)


class ConfigError(SealpodError):
    """Bad user input, settings or files the user gave us (not untrusted evidence)."""


class ManifestError(ConfigError):
    """A deployment or enclave manifest is invalid; ``path`` names the offending field."""

    def __init__(self, message: str, *, path: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class QuoteFormatError(SealpodError):
    """Bytes that claim to be a DCAP quote (or part of one) do not parse."""


class VerificationError(SealpodError):
    """Untrusted evidence failed a check.

    ``reason`` is stable and machine-readable (snake_case); the message is for humans.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}")


class NetworkError(SealpodError):
    """A transport failure talking to a PCCS, the coordinator or another service."""

    exit_code = 3


class EnvironmentUnavailableError(SealpodError):
    """The machine lacks something sealpod needs (a device, a program, a kernel feature)."""

    exit_code = 3
