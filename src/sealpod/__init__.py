"""sealpod: confidential containers on Intel SGX (or an explicit, honest simulation).

The public surface is organised by concept (see the sub-packages); the names most users need
are re-exported here.
"""

from sealpod.errors import (
    ConfigError,
    EnvironmentUnavailableError,
    ManifestError,
    NetworkError,
    QuoteFormatError,
    SealpodError,
    VerificationError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "EnvironmentUnavailableError",
    "ManifestError",
    "NetworkError",
    "QuoteFormatError",
    "SealpodError",
    "VerificationError",
    "__version__",
]
