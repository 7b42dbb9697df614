"""The coordinator's refusals that are not evidence failures (wrong state, limits, bad requests).

Evidence that fails a check is a :class:`~sealpod.errors.VerificationError` as everywhere else;
:class:`RequestRefusedError` covers the rest and carries the HTTP status the API answers with. Both
carry a stable snake_case code that the API puts in ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from sealpod.errors import SealpodError

__all__ = ["RequestRefusedError"]


class RequestRefusedError(SealpodError):
    """The coordinator refused a request; ``code`` is stable, ``status`` is the HTTP status."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        self.code = code
        self.status = status
        super().__init__(f"{code}: {message}")
