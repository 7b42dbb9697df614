"""How evidence is bound to keys (DESIGN.md, "Binding evidence to keys").

* The coordinator's quote: ``report_data = SHA-256(root_cert_der ‖ nonce) ‖ 0³²``: whoever
  holds a quote over a fresh nonce knows the root certificate was chosen by the attested
  enclave, so pinning that root pins the enclave.
* A service's activation quote: ``report_data = SHA-256("sealpod-activation-v1" ‖ SPKI_DER ‖
  nonce) ‖ 0³²``: the certificate the coordinator issues goes to the key the attested enclave
  made, for this activation only.

Both sides (server and client) build report data with these functions only.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "ACTIVATION_LABEL",
    "MAX_NONCE_BYTES",
    "MIN_NONCE_BYTES",
    "activation_report_data",
    "coordinator_report_data",
]

ACTIVATION_LABEL = b"sealpod-activation-v1"
#: Nonces shorter than this could be guessed or repeat; longer ones serve no purpose.
MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64


def coordinator_report_data(root_cert_der: bytes, nonce: bytes) -> bytes:
    """The 64-byte report data of the coordinator's quote over ``nonce``."""
    return hashlib.sha256(bytes(root_cert_der) + bytes(nonce)).digest() + bytes(32)


def activation_report_data(spki_der: bytes, nonce: bytes) -> bytes:
    """The 64-byte report data of a service's activation quote."""
    return hashlib.sha256(ACTIVATION_LABEL + bytes(spki_der) + bytes(nonce)).digest() + bytes(32)
