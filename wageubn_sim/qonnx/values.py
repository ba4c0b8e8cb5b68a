"""What the import's walk carries from node to node: the tensors it computes, the quantized
constants, and the registers a Quant stands for."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow, Rounding


@dataclasses.dataclass
class Tensor:
    """A tensor the graph computes: our value's name, its shape (no batch) and grid."""
    value: str
    shape: tuple
    frac: int


@dataclasses.dataclass
class QConst:
    """A quantized constant: integers on one grid 2**-frac (per-channel grids aligned)."""
    ints: np.ndarray
    fmt: Format


@dataclasses.dataclass
class QuantRegister:
    fmt: Format
    rounding: Rounding
    overflow: Overflow
    from_frac: int | None  # Trunc: its input grid (the value is rounded onto it first)
    marks: frozenset
