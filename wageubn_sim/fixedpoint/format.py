"""Fixed-point formats: a value is ``q * 2**-frac_bits`` for an integer ``q`` of ``bits`` bits.

Stated APyTypes-style: ``bits = int_bits + frac_bits``, where ``int_bits`` counts the sign
bit of a signed format. ``frac_bits`` may be negative (a coarse grid) or exceed ``bits``.
``bits=None`` is an unbounded format (the scheme's Q(x, k)): no overflow handling applies.
"""
from __future__ import annotations

import dataclasses

import numpy as np

# Every register is at most 62 bits wide (signed; unsigned at most 61), so every value lies in
# the range of s62, -2**61 <= q < 2**61, and the primitives in `scalar.py` never leave int64 (a
# sum of two values, a compare against 2**62, a magnitude).
MAX_BITS = 62
MAX_UNSIGNED_BITS = MAX_BITS - 1  # u62 would reach 2**62 - 1, outside the s62 range
# 2**frac_bits and 2**-frac_bits are both exact normal float64 values in this range.
MIN_FRAC_BITS = -1000
MAX_FRAC_BITS = 1000


@dataclasses.dataclass(frozen=True)
class Format:
    bits: int | None
    frac_bits: int
    signed: bool = True

    def __post_init__(self):
        if not isinstance(self.signed, bool):
            raise TypeError(f"signed must be True or False, got {self.signed!r}")
        if self.bits is not None:
            if isinstance(self.bits, bool) or not isinstance(self.bits, int):
                raise TypeError(f"bits must be an int or None, got {self.bits!r}")
            low, high = (2, MAX_BITS) if self.signed else (1, MAX_UNSIGNED_BITS)
            if not low <= self.bits <= high:
                kind = "signed" if self.signed else "unsigned"
                raise ValueError(
                    f"a {kind} format needs {low} to {high} bits, got bits={self.bits}; "
                    f"pick a width in that range")
        if isinstance(self.frac_bits, bool) or not isinstance(self.frac_bits, int):
            raise TypeError(f"frac_bits must be an int, got {self.frac_bits!r}")
        if not MIN_FRAC_BITS <= self.frac_bits <= MAX_FRAC_BITS:
            raise ValueError(
                f"frac_bits={self.frac_bits} is outside [{MIN_FRAC_BITS}, {MAX_FRAC_BITS}]: "
                f"the scale 2**-frac_bits would not be an exact float64")

    @classmethod
    def from_seed(cls, k_dec: int, k_all: int | None = None) -> "Format":
        """The seed's ``*_dec_bit_width`` / ``*_all_bit_width`` pair.

        ``k_dec`` counts the fraction *and* the sign position (Q(x, k) = round(x*2**(k-1)) /
        2**(k-1)), so ``frac_bits = k_dec - 1``; ``k_all`` is the total signed width.
        """
        _check_seed_width("k_dec", k_dec)
        if k_all is not None:
            _check_seed_width("k_all", k_all)
        return cls(bits=k_all, frac_bits=k_dec - 1, signed=True)

    @property
    def int_bits(self) -> int | None:
        return None if self.bits is None else self.bits - self.frac_bits

    @property
    def bounded(self) -> bool:
        return self.bits is not None

    @property
    def min_int(self) -> int | None:
        if self.bits is None:
            return None
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max_int(self) -> int | None:
        if self.bits is None:
            return None
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def lsb(self) -> float:
        return 2.0 ** -self.frac_bits

    def describe(self) -> str:
        sign = "s" if self.signed else "u"
        width = "inf" if self.bits is None else str(self.bits)
        return f"{sign}{width}.{self.frac_bits}"

    def to_dict(self) -> dict:
        return {"bits": self.bits, "frac_bits": self.frac_bits, "signed": self.signed}

    @classmethod
    def from_dict(cls, d: dict) -> "Format":
        """From `to_dict`'s form; every key must be there (a missing one is an error, not a
        default)."""
        if not isinstance(d, dict) or set(d) != {"bits", "frac_bits", "signed"}:
            raise ValueError(f"a format is {{'bits', 'frac_bits', 'signed'}}, got {d!r}")
        return cls(bits=d["bits"], frac_bits=d["frac_bits"], signed=d["signed"])


def _check_seed_width(name: str, k) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name} must be an int, got {k!r}")
    if k < 1:
        raise ValueError(f"{name}={k}: a seed bit width counts the sign position and must be >= 1")


@dataclasses.dataclass(frozen=True, eq=False)
class FixedArray:
    """Integers ``q`` (int64) standing for the exact values ``q * 2**-frac_bits``."""

    q: "np.ndarray"
    frac_bits: int

    def __post_init__(self):
        q = np.asarray(self.q)
        if q.dtype.kind not in "iu":
            raise TypeError(f"FixedArray holds integers, got dtype {q.dtype}")
        object.__setattr__(self, "q", q.astype(np.int64, copy=False))
        object.__setattr__(self, "frac_bits", int(self.frac_bits))

    def to_float(self) -> "np.ndarray":
        """The values as float64: exact while |q| < 2**53."""
        return self.q.astype(np.float64) * 2.0 ** -self.frac_bits


def bits_needed(lo: int, hi: int, signed: bool = True, narrow: bool = False) -> int:
    """The narrowest width whose range holds lo..hi: two's complement (``narrow``: without its
    most negative value, as a SAT_SYM register), or unsigned (lo >= 0)."""
    if not signed:
        if lo < 0:
            raise ValueError(f"an unsigned register cannot hold {lo}")
        return max(1, hi.bit_length())
    return max(2, max(hi, -lo if narrow else -lo - 1, 0).bit_length() + 1)
