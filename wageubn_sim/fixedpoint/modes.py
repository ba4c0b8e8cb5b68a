"""Rounding and overflow modes, with their hardware names.

The integer values of the enums are what the Numba kernels receive; never renumber them.
`docs/arithmetic.md` defines each mode; `MODE_NAMES` maps them onto other tools' names.
"""
from __future__ import annotations

import enum


class Rounding(enum.IntEnum):
    """How a value between two representable neighbours is resolved."""

    HALF_EVEN = 0  # nearest, ties to even (torch.round, np.round, tf.round)
    HALF_UP = 1  # nearest, ties toward +infinity
    HALF_AWAY = 2  # nearest, ties away from zero
    FLOOR = 3  # toward -infinity: two's complement truncation, drop the low bits
    TOWARD_ZERO = 4  # toward zero: sign-magnitude truncation
    STOCHASTIC = 5  # up with probability ~frac, on the magnitude; needs random bits

    @classmethod
    def parse(cls, value: "Rounding | str | int") -> "Rounding":
        return _parse(cls, value, "rounding")


class Overflow(enum.IntEnum):
    """What happens to an integer that does not fit the format's bits."""

    WRAP = 0  # keep the low `bits` bits (two's complement), as a plain adder does
    SAT = 1  # clamp to [min_int, max_int]
    SAT_SYM = 2  # clamp to [-max_int, max_int]: the seed's +-(2**(w-1)-1); unsigned = SAT

    @classmethod
    def parse(cls, value: "Overflow | str | int") -> "Overflow":
        return _parse(cls, value, "overflow")


# The modes as the plain ints Numba kernels compare with (a module's int globals are
# compile-time constants there): defined once, here.
ROUND_HALF_EVEN, ROUND_HALF_UP, ROUND_HALF_AWAY, ROUND_FLOOR, ROUND_TOWARD_ZERO, ROUND_STOCHASTIC = (
    int(r) for r in (Rounding.HALF_EVEN, Rounding.HALF_UP, Rounding.HALF_AWAY, Rounding.FLOOR,
                     Rounding.TOWARD_ZERO, Rounding.STOCHASTIC))
OVERFLOW_WRAP, OVERFLOW_SAT, OVERFLOW_SAT_SYM = (int(o) for o in (Overflow.WRAP, Overflow.SAT, Overflow.SAT_SYM))


def _parse(enum_cls, value, what):
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        key = value.strip().upper()
        if key in enum_cls.__members__:
            return enum_cls[key]
        # Only ap_fixed/APyTypes names are accepted as aliases: they are unambiguous,
        # whereas "ROUND" means half-even in QONNX but half-away in MATLAB, and QONNX's
        # "HALF_UP" is our HALF_AWAY.
        for member, names in MODE_NAMES[enum_cls].items():
            if key in {names["ap_fixed"], names["APyTypes"]} - {None}:
                return member
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return enum_cls(value)
        except ValueError:
            pass
    choices = ", ".join(enum_cls.__members__)
    raise ValueError(f"unknown {what} mode {value!r}; choose one of: {choices}")


# Names of each mode in other tools. None: the tool has no such mode.
# QONNX's Quant op only names rounding (its rounding_mode table: ROUND = half to even, HALF_UP
# = half away from zero, DOWN = toward zero; no half toward +inf); its saturation is clamp
# (narrow=1 is symmetric).
# Two tables: members of the two IntEnums compare equal as ints, so one dict would merge them.
ROUNDING_NAMES: dict[Rounding, dict[str, str | None]] = {
    Rounding.HALF_EVEN: {"ap_fixed": "AP_RND_CONV", "APyTypes": "RND_CONV",
                         "MATLAB": "Convergent", "QONNX": "ROUND"},
    Rounding.HALF_UP: {"ap_fixed": "AP_RND", "APyTypes": "RND",
                       "MATLAB": "Nearest", "QONNX": None},
    Rounding.HALF_AWAY: {"ap_fixed": "AP_RND_INF", "APyTypes": "RND_INF",
                         "MATLAB": "Round", "QONNX": "HALF_UP"},
    Rounding.FLOOR: {"ap_fixed": "AP_TRN", "APyTypes": "TRN",
                     "MATLAB": "Floor", "QONNX": "FLOOR"},
    Rounding.TOWARD_ZERO: {"ap_fixed": "AP_TRN_ZERO", "APyTypes": "TRN_ZERO",
                           "MATLAB": "Zero", "QONNX": "DOWN"},
    Rounding.STOCHASTIC: {"ap_fixed": None, "APyTypes": None,
                          "MATLAB": None, "QONNX": None},
}

OVERFLOW_NAMES: dict[Overflow, dict[str, str | None]] = {
    Overflow.WRAP: {"ap_fixed": "AP_WRAP", "APyTypes": "WRAP",
                    "MATLAB": "Wrap", "QONNX": None},
    Overflow.SAT: {"ap_fixed": "AP_SAT", "APyTypes": "SAT",
                   "MATLAB": "Saturate", "QONNX": "narrow=0"},
    Overflow.SAT_SYM: {"ap_fixed": "AP_SAT_SYM", "APyTypes": None,
                       "MATLAB": None, "QONNX": "narrow=1"},
}

MODE_NAMES = {Rounding: ROUNDING_NAMES, Overflow: OVERFLOW_NAMES}
