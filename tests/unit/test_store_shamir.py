"""Shamir's secret sharing over GF(256), checked against an independent implementation."""

from __future__ import annotations

import itertools
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealpod.store.shamir import Share, combine_shares, gf_div, gf_mul, split_secret


def _slow_mul(a: int, b: int) -> int:
    """Carry-less multiplication reduced by x^8+x^4+x^3+x+1 (FIPS-197 §4.2), bit by bit."""
    product = 0
    for bit in range(8):
        if b >> bit & 1:
            product ^= a << bit
    for bit in range(14, 7, -1):
        if product >> bit & 1:
            product ^= 0x11B << (bit - 8)
    return product


def _slow_inverse(a: int) -> int:
    return next(b for b in range(1, 256) if _slow_mul(a, b) == 1)


def _slow_interpolate(points: list[tuple[int, int]]) -> int:
    """Lagrange at 0, written independently with the slow field operations."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        term = yi
        for m, (xm, _) in enumerate(points):
            if m != i:
                term = _slow_mul(term, _slow_mul(xm, _slow_inverse(xm ^ xi)))
        total ^= term
    return total


def test_field_multiplication_matches_fips_197_examples() -> None:
    assert gf_mul(0x57, 0x83) == 0xC1  # FIPS-197 §4.2
    assert gf_mul(0x57, 0x13) == 0xFE  # FIPS-197 §4.2.1
    assert gf_mul(0x53, 0xCA) == 0x01  # FIPS-197 §4.2, multiplicative inverse example


def test_field_multiplication_matches_the_bitwise_definition_everywhere() -> None:
    for a in range(256):
        for b in range(256):
            assert gf_mul(a, b) == _slow_mul(a, b)


def test_field_division_inverts_multiplication() -> None:
    for a in range(256):
        for b in range(1, 256):
            assert gf_mul(gf_div(a, b), b) == a
    with pytest.raises(ZeroDivisionError):
        gf_div(1, 0)


@pytest.mark.parametrize(("threshold", "count"), [(1, 1), (1, 3), (2, 3), (3, 5), (5, 5)])
def test_every_k_subset_reconstructs_the_secret(threshold: int, count: int) -> None:
    secret = secrets.token_bytes(32)
    shares = split_secret(secret, threshold=threshold, count=count)
    assert [s.x for s in shares] == list(range(1, count + 1))
    for subset in itertools.combinations(shares, threshold):
        assert combine_shares(list(subset)) == secret
        # Independent interpolation of the first bytes.
        for j in range(4):
            assert _slow_interpolate([(s.x, s.y[j]) for s in subset]) == secret[j]
    # More than k shares also work (they lie on the same polynomial).
    assert combine_shares(shares) == secret


@pytest.mark.parametrize(("threshold", "count"), [(2, 3), (3, 5), (5, 5)])
def test_k_minus_one_shares_do_not_reveal_the_secret(threshold: int, count: int) -> None:
    secret = secrets.token_bytes(32)
    shares = split_secret(secret, threshold=threshold, count=count)
    for subset in itertools.combinations(shares, threshold - 1):
        assert combine_shares(list(subset)) != secret


def test_single_share_of_a_2_of_n_split_is_uniformly_spread() -> None:
    # With k = 2 a share byte is s + a*x for uniform a: all 256 values must occur.
    seen = {split_secret(b"\x00", threshold=2, count=2)[0].y[0] for _ in range(3000)}
    assert len(seen) > 240


def test_share_values_depend_on_fresh_randomness() -> None:
    secret = b"same secret, split twice........"
    first = split_secret(secret, threshold=2, count=3)
    second = split_secret(secret, threshold=2, count=3)
    assert [s.y for s in first] != [s.y for s in second]


def test_threshold_one_shares_are_the_secret() -> None:
    assert all(s.y == b"abc" for s in split_secret(b"abc", threshold=1, count=4))


@pytest.mark.parametrize(
    ("secret", "threshold", "count"),
    [(b"", 1, 1), (b"s", 0, 1), (b"s", 3, 2), (b"s", 2, 256)],
)
def test_bad_split_parameters_are_refused(secret: bytes, threshold: int, count: int) -> None:
    with pytest.raises(ValueError):
        split_secret(secret, threshold=threshold, count=count)


@pytest.mark.parametrize(
    "shares",
    [
        [],
        [Share(1, b"ab"), Share(1, b"cd")],
        [Share(1, b"ab"), Share(2, b"c")],
        [Share(0, b"ab")],
        [Share(256, b"ab")],
        [Share(1, b"")],
    ],
)
def test_bad_share_sets_are_refused(shares: list[Share]) -> None:
    with pytest.raises(ValueError):
        combine_shares(shares)


def test_share_repr_hides_the_value() -> None:
    share = split_secret(b"topsecret", threshold=1, count=1)[0]
    assert "topsecret" not in repr(share) and share.y.hex() not in repr(share)


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=48),
    threshold=st.integers(min_value=1, max_value=6),
    extra=st.integers(min_value=0, max_value=4),
    data=st.data(),
)
def test_any_k_shares_reconstruct(
    secret: bytes, threshold: int, extra: int, data: st.DataObject
) -> None:
    shares = split_secret(secret, threshold=threshold, count=threshold + extra)
    chosen = data.draw(st.permutations(shares))[:threshold]
    assert combine_shares(chosen) == secret
