"""Shamir's secret sharing over GF(2^8), byte by byte.

Field: GF(2^8) with the AES reduction polynomial x^8 + x^4 + x^3 + x + 1 (0x11B, FIPS-197
§4.2); 0x03 generates its multiplicative group, which gives the log/exp tables below.

Splitting a secret ``s`` of any length into ``count`` shares with threshold ``k``: for each
byte ``s[j]`` a fresh random polynomial ``p_j(x) = s[j] + a_1 x + ... + a_{k-1} x^{k-1}`` with
coefficients from the OS CSPRNG; share ``i`` (``x = i``, 1 <= i <= count <= 255) holds
``p_j(i)`` for every ``j``. Any ``k`` shares give ``s`` back by Lagrange interpolation at
``x = 0``; ``k - 1`` shares are consistent with every possible secret (perfect secrecy), so
combining too few shares silently yields garbage. Callers that need to *detect* that must check
the result (the sealed store does: the recovered key must open its authenticated state head).

The table lookups are not constant-time; the secrets shared here are recovered rarely, by the
coordinator itself, and never on attacker-chosen inputs that could be timed.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

_EXP = [0] * 510
_LOG = [0] * 256


def _build_tables() -> None:
    value = 1
    for power in range(255):
        _EXP[power] = value
        _LOG[value] = power
        # multiply by the generator 0x03 = x + 1: value * x (xtime) XOR value
        doubled = value << 1
        if doubled & 0x100:
            doubled ^= 0x11B
        value = doubled ^ value
    for power in range(255, 510):
        _EXP[power] = _EXP[power - 255]


_build_tables()


def gf_mul(a: int, b: int) -> int:
    """Multiply two elements of GF(2^8)."""
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def gf_div(a: int, b: int) -> int:
    """Divide ``a`` by ``b`` in GF(2^8).

    Raises:
        ZeroDivisionError: when ``b`` is 0.
    """
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(256)")
    if a == 0:
        return 0
    return _EXP[_LOG[a] + 255 - _LOG[b]]


@dataclass(frozen=True)
class Share:
    """One share: the evaluation point ``x`` (1..255) and the values ``y`` (secret-sized)."""

    x: int
    y: bytes = field(repr=False)


def split_secret(secret: bytes, *, threshold: int, count: int) -> list[Share]:
    """Split ``secret`` into ``count`` shares, any ``threshold`` of which recover it.

    Raises:
        ValueError: unless 1 <= threshold <= count <= 255 and the secret is non-empty.
    """
    if not secret:
        raise ValueError("the secret must not be empty")
    if not 1 <= threshold <= count <= 255:
        raise ValueError("need 1 <= threshold <= count <= 255")
    # coefficients[j] = [s_j, a_1, ..., a_{k-1}] for byte j
    randomness = secrets.token_bytes(len(secret) * (threshold - 1))
    shares = []
    for x in range(1, count + 1):
        y = bytearray(len(secret))
        for j, constant in enumerate(secret):
            coefficients = randomness[j * (threshold - 1) : (j + 1) * (threshold - 1)]
            # Horner's rule, highest coefficient first.
            accumulator = 0
            for coefficient in reversed(coefficients):
                accumulator = gf_mul(accumulator, x) ^ coefficient
            y[j] = gf_mul(accumulator, x) ^ constant
        shares.append(Share(x=x, y=bytes(y)))
    return shares


def combine_shares(shares: Sequence[Share]) -> bytes:
    """Interpolate ``shares`` at x = 0. With fewer shares than the threshold: garbage.

    Raises:
        ValueError: for no shares, duplicate or out-of-range ``x``, or shares of unequal length.
    """
    if not shares:
        raise ValueError("no shares")
    xs = [share.x for share in shares]
    if len(set(xs)) != len(xs):
        raise ValueError("duplicate shares")
    if any(not 1 <= x <= 255 for x in xs):
        raise ValueError("share index out of range")
    length = len(shares[0].y)
    if length == 0 or any(len(share.y) != length for share in shares):
        raise ValueError("shares differ in length")
    # Lagrange basis at 0: l_i(0) = prod_{m != i} x_m / (x_m - x_i); subtraction is XOR.
    weights = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for m, xm in enumerate(xs):
            if m != i:
                numerator = gf_mul(numerator, xm)
                denominator = gf_mul(denominator, xm ^ xi)
        weights.append(gf_div(numerator, denominator))
    secret = bytearray(length)
    for weight, share in zip(weights, shares, strict=True):
        for j, value in enumerate(share.y):
            secret[j] ^= gf_mul(weight, value)
    return bytes(secret)
