"""What the import's walk carries from node to node: the tensors it computes, the quantized
constants, and the registers a Quant stands for."""
from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np

from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow, Rounding


def unit(frac: int, scale: tuple | None) -> tuple:
    """2**-frac times each float scale (one, or one per channel), exactly."""
    grid = Fraction(1, 1 << frac) if frac >= 0 else Fraction(1 << -frac)
    return tuple(grid * s for s in (scale or (Fraction(1),)))


def per_channel(values: tuple, count: int) -> tuple:
    """One value per channel: a single value repeated, or the values as they are."""
    return values * count if len(values) == 1 else values


@dataclasses.dataclass
class Tensor:
    """A tensor the graph computes: our value's name, its shape (no batch) and grid."""
    value: str
    shape: tuple
    frac: int
    scale: tuple | None = None  # float scales, one or one per channel: the value is ints * 2**-frac * scale

    def unit(self) -> tuple:
        """What one integer of it is worth, exactly: per channel, or one for all."""
        return unit(self.frac, self.scale)


@dataclasses.dataclass
class QConst:
    """A quantized constant: integers on one grid 2**-frac (per-channel grids aligned)."""
    ints: np.ndarray
    fmt: Format
    scale: tuple | None = None  # float scales per output channel (axis 0), or one: ints * 2**-frac * scale

    def unit(self) -> tuple:
        """What one integer of it is worth, exactly: per output channel, or one for all."""
        return unit(self.fmt.frac_bits, self.scale)


@dataclasses.dataclass
class FloatChain:
    """A float value the walk has not quantized yet: the integer tensor it starts from and the
    monotone stages (`fixedpoint.chains`) applied to it since; ``source`` None: the network's
    float input itself. ``nodes``: the ONNX nodes it went through, for messages."""
    source: Tensor | None
    stages: list
    channels: int
    shape: tuple
    nodes: list
    flattened: bool = False  # a Flatten/Reshape on the way: done on the integers where it ends
    ops: tuple = ()  # per stage after the first, its float32 op (`graph.tail.TailOp`; None: none)

    def describe(self) -> str:
        """Where the float value came from, for messages."""
        return " -> ".join(self.nodes) or ("a float scale" if self.source is not None else "the float input")


@dataclasses.dataclass
class QuantRegister:
    fmt: Format
    rounding: Rounding
    overflow: Overflow
    from_frac: int | None  # Trunc: its input grid (the value is rounded onto it first)
    marks: frozenset
