"""Supported bit-widths (torch-free, shared by the policy, the cost model and the quantizers)."""

from __future__ import annotations

from .errors import BitWidthError, shorten

__all__ = ["MIN_BITS", "MAX_BITS", "ACT_EXTRA_BITS", "check_bits"]

MIN_BITS = 2
MAX_BITS = 8
# Wider activation widths a policy may give (not searched): 16 is TFLite's int16x8 mode (8-bit weights, 16-bit
# activations).
ACT_EXTRA_BITS = (16,)


def check_bits(bits: object, what: str = "bits", *, allow_float: bool = False, act: bool = False) -> int | None:
    """Return ``bits`` if it is an integer in [MIN_BITS, MAX_BITS] (or None when ``allow_float``; or one of
    ACT_EXTRA_BITS when ``act``: an activation width)."""
    if bits is None and allow_float:
        return None
    if isinstance(bits, bool) or not isinstance(bits, int) or not (
            MIN_BITS <= bits <= MAX_BITS or (act and bits in ACT_EXTRA_BITS)):
        extra = f" or {', '.join(map(str, ACT_EXTRA_BITS))}" if act else ""
        allowed = f"an integer in {MIN_BITS}..{MAX_BITS}{extra}" + (" or null (float)" if allow_float else "")
        raise BitWidthError(f"{what} must be {allowed}, got {shorten(bits)}")
    return bits
