"""Supported bit-widths (torch-free, shared by the policy, the cost model and the quantizers)."""

from __future__ import annotations

from .errors import BitWidthError, shorten

__all__ = ["MIN_BITS", "MAX_BITS", "check_bits"]

MIN_BITS = 2
MAX_BITS = 8


def check_bits(bits: object, what: str = "bits", *, allow_float: bool = False) -> int | None:
    """Return ``bits`` if it is an integer in [MIN_BITS, MAX_BITS] (or None when ``allow_float``)."""
    if bits is None and allow_float:
        return None
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        allowed = f"an integer in {MIN_BITS}..{MAX_BITS}" + (" or null (float)" if allow_float else "")
        raise BitWidthError(f"{what} must be {allowed}, got {shorten(bits)}")
    return bits
