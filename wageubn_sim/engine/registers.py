"""Registers shared by the layer kernels: the accumulator spec, tensor formats, the output
stage (align, shift, round, fit) and the event counts every kernel reports.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..fixedpoint.arrays import magnitude_max, requantize_counted, requantize_flagged
from ..fixedpoint.format import MAX_BITS, Format
from ..fixedpoint.modes import Overflow, Rounding

MAC_ORDERS = ("channel_major", "kernel_major")


@dataclasses.dataclass(frozen=True)
class Accumulator:
    """The MAC accumulator of one layer.

    ``bits=None``: exact (no overflow can happen; values are checked against the 62-bit
    domain). Otherwise a ``bits``-wide signed register with ``overflow`` applied after every
    addition. With WRAP the result is the exact sum mod 2**bits whatever the order; with SAT it
    depends on the order: ``mac_order`` (channel_major: for c, for kh, for kw; kernel_major:
    for kh, for kw, for c) and ``k_split`` (the reduction cut into that many consecutive chunks,
    each summed in its own accumulator from zero, the partial sums then added in order into the
    first, with the same overflow rule).
    """

    bits: int | None = None
    overflow: Overflow = Overflow.SAT
    mac_order: str = "channel_major"
    k_split: int = 1

    def __post_init__(self):
        object.__setattr__(self, "overflow", Overflow.parse(self.overflow))
        if self.bits is not None and (isinstance(self.bits, bool) or not isinstance(self.bits, int)
                                      or not 2 <= self.bits <= MAX_BITS):
            raise ValueError(f"accumulator bits={self.bits}: choose 2..{MAX_BITS}, or None for exact")
        if self.mac_order not in MAC_ORDERS:
            raise ValueError(f"mac_order={self.mac_order!r}: choose one of {MAC_ORDERS}")
        if isinstance(self.k_split, bool) or not isinstance(self.k_split, int) or self.k_split < 1:
            raise ValueError(f"k_split={self.k_split!r} must be a positive int")

    def to_dict(self):
        return {"bits": self.bits, "overflow": self.overflow.name, "mac_order": self.mac_order,
                "k_split": self.k_split}

    @classmethod
    def from_dict(cls, d):
        keys = {"bits", "overflow", "mac_order", "k_split"}
        if not isinstance(d, dict) or set(d) != keys:
            raise ValueError(f"an accumulator is {sorted(keys)}, got {d!r}")
        if not isinstance(d["overflow"], str):
            raise ValueError(f"accumulator overflow {d['overflow']!r} is not a mode name")
        return cls(d["bits"], d["overflow"], d["mac_order"], d["k_split"])


def check_ints(owner: str, minimum: int, pair: bool = True, **values) -> None:
    """Refuse parameters that are not ints (pairs of ints with ``pair``) of at least ``minimum``:
    a params struct checks itself when it is made, before any kernel reads it."""
    for name, value in values.items():
        items = value if pair else (value,)
        if ((pair and (not isinstance(value, tuple) or len(value) != 2))
                or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in items)):
            kind = "a pair of ints" if pair else "an int"
            raise ValueError(f"{owner}: {name}={value!r} must be {kind}, each at least {minimum}")


@dataclasses.dataclass
class Events:
    """What a layer's registers did on one run (counts over the whole batch)."""

    wraps: int = 0  # wraps (an accumulator's per MAC in narrow mode; final otherwise)
    saturations: int = 0  # saturations (likewise)
    ties: int = 0  # exact ties met by a rounding
    underflows: int = 0  # nonzero values rounded to zero

    def counts(self) -> dict:
        """The counts as a plain dict (manifests, reports)."""
        return {f.name: int(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def add(self, other: "Events") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @classmethod
    def total(cls, parts) -> "Events":
        out = cls()
        for part in parts:
            out.add(part)
        return out

    @classmethod
    def of_requantize(cls, counts: dict, overflow: Overflow) -> "Events":
        """The events of one `requantize_counted` (its overflows are wraps under WRAP, else
        saturations)."""
        wrapped = counts["overflowed"] if overflow == Overflow.WRAP else 0
        return cls(wraps=wrapped, saturations=counts["overflowed"] - wrapped,
                   ties=counts["ties"], underflows=counts["underflows"])


@dataclasses.dataclass
class Output:
    """A kernel's result: the output integers, their format, and on request the stages."""

    q: np.ndarray
    fmt: Format
    events: Events
    trace: dict = dataclasses.field(default_factory=dict)  # name -> int64 array
    flags: np.ndarray | None = None  # per output element: TIE | OVERFLOWED | ACC_EVENT
    # ``events`` split by register ('input', 'accumulator', 'output') where a kernel has several
    register_events: dict = dataclasses.field(default_factory=dict)
    acc_fmt: Format | None = None  # a MAC layer's accumulator register (its trace stage 'accumulator')

    def events_at(self, register: str) -> Events:
        """The events of one of the layer's registers; a kernel with a single register reports
        them all at 'output'."""
        if self.register_events:
            return self.register_events.get(register, Events())
        return self.events if register == "output" else Events()


ACC_EVENT = 4  # flag: the accumulator wrapped or saturated for this element


def output_stage(value: np.ndarray, frac: int, out_fmt: Format | None, rounding: Rounding,
                 overflow: Overflow, trace: bool, stages: dict, flags: np.ndarray | None = None):
    """Move ``value`` (at 2**-frac) into ``out_fmt`` (None: keep it as it is).

    Returns (q, fmt, events, flags); records 'shifted' (floor), 'rounded' (before overflow)
    and 'output' when tracing.
    """
    events = Events()
    if out_fmt is None:
        if trace:
            stages["output"] = value
        return value, Format(None, frac), events, (np.zeros(value.shape, np.uint8)
                                                    if flags is None else flags)
    out, f, counts = requantize_counted(value, frac, out_fmt, rounding, overflow)
    events = Events.of_requantize(counts, overflow)
    if trace:
        unbounded = Format(None, out_fmt.frac_bits)
        stages["shifted"] = requantize_flagged(value, frac, unbounded, Rounding.FLOOR)[0]
        stages["rounded"] = requantize_flagged(value, frac, unbounded, rounding)[0]
        stages["output"] = out
    return out, out_fmt, events, f if flags is None else flags | f


def input_stage(x: np.ndarray, frac: int, register: Format | None, rounding: Rounding):
    """Hold x (at 2**-frac) in the layer's input register (``iostrict``; SAT_SYM), if it has
    one. Returns (x, its frac, {'input': Events} or {})."""
    if register is None:
        return x, frac, {}
    q, _, counts = requantize_counted(x, frac, register, rounding, Overflow.SAT_SYM)
    return q, register.frac_bits, {"input": Events.of_requantize(counts, Overflow.SAT_SYM)}


def check_aligned(magnitude: int, frac: int, to_frac: int) -> int:
    """The shift that moves values of at most ``magnitude`` from 2**-frac to the finer grid
    2**-to_frac, exactly; raises where it cannot (a coarser grid, or beyond the domain)."""
    if to_frac < frac:
        raise ValueError(f"cannot align frac {frac} down to {to_frac} exactly")
    shift = to_frac - frac
    if shift and magnitude >= (1 << max(0, 61 - shift)):
        raise OverflowError(f"aligning to {to_frac} fractional bits leaves the 62-bit domain")
    return shift


def align(q: np.ndarray, frac: int, to_frac: int) -> np.ndarray:
    """q at 2**-frac, exactly, at the finer grid 2**-to_frac, as int64 (q itself when it
    already is: treat the result as read-only)."""
    if to_frac == frac and q.dtype == np.int64:
        return q
    shift = check_aligned(magnitude_max(q) if to_frac != frac else 0, frac, to_frac)
    return q.astype(np.int64) << shift


def check_channel_input(op: str, x: np.ndarray, x_frac: int, made_for: int, what: str) -> None:
    """The input of a per-channel layer whose constants were made for one input grid (the
    imported float chains: thresholds, multipliers): N, C, ... on that grid."""
    if x.ndim < 2:
        raise ValueError(f"{op} expects an N, C, ... input, got shape {x.shape}")
    if x_frac != made_for:
        raise ValueError(f"{op}: the input is on 2**-{x_frac}, the {what} were made for "
                         f"2**-{made_for}; import the model again for this input format")
