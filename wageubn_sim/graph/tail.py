"""A float tail: float ops after the network's last integer tensor that no quantizer ends (FINN's
TensorNorm: Sub, Div, Mul, Add), computed as the reference computes them (docs/arithmetic.md
section 12.6): the last integer tensor exact, its value rounded once to float32, then each op in
float32 in the model's order (IEEE float32 rounds each result once, as onnxruntime and torch do).
Not the engine's arithmetic: a graph with a tail says so, and `compare` names it."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..execution.run import along_channels

OPS = ("Add", "Sub", "SubFrom", "Mul", "Div", "Max", "Min")  # SubFrom: c - x; Max/Min: Relu, Clip


@dataclasses.dataclass(frozen=True)
class TailOp:
    op: str
    operand: tuple  # float32 values: one, or one per channel (axis 1)

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"float tail: op {self.op!r} is not one of {list(OPS)}")
        values = np.asarray(self.operand, np.float64)
        if values.ndim != 1 or not values.size or not np.all(np.isfinite(values)) or \
                not np.array_equal(values.astype(np.float32).astype(np.float64), values):
            raise ValueError(f"float tail: {self.op}'s operand must be finite float32 values")

    def apply(self, x: np.ndarray) -> np.ndarray:
        c = along_channels(self.operand, x.ndim).astype(np.float32)  # float32 values: exact
        if self.op == "SubFrom":
            return np.subtract(c, x, dtype=np.float32)
        ufunc = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
                 "Max": np.maximum, "Min": np.minimum}[self.op]
        return ufunc(x, c, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class FloatTail:
    """``unit``: what one integer of the last tensor is worth (one, or one per channel; exact
    binary fractions), the product rounded once to float32; ``offset``: float32 values added to
    it in float32 where nonzero (a float bias); then ``ops`` in order; ``names``: the model's
    nodes, for messages."""
    unit: tuple
    offset: tuple
    ops: tuple
    names: tuple

    def __post_init__(self):
        for field in ("unit", "offset"):
            values = np.asarray(getattr(self, field), np.float64)
            if values.ndim != 1 or not values.size or not np.all(np.isfinite(values)):
                raise ValueError(f"float tail: {field} must be finite float64 values")
        offset = np.asarray(self.offset, np.float64)
        if not np.array_equal(offset.astype(np.float32).astype(np.float64), offset):
            raise ValueError("float tail: offset must be float32 values")

    def describe(self) -> str:
        return " -> ".join(self.names)

    def __call__(self, q: np.ndarray) -> np.ndarray:
        """The tail on the last integer tensor's integers q (N, C, ...): float32 values."""
        unit, offset = along_channels(self.unit, q.ndim), along_channels(self.offset, q.ndim)
        # q * unit is exact in float64 while |q| times unit's mantissa < 2**53
        x = (q.astype(np.float64) * unit).astype(np.float32)
        if np.any(offset):
            x = np.add(x, offset.astype(np.float32), dtype=np.float32)
        for op in self.ops:
            x = op.apply(x)
        return x

    def to_json(self) -> dict:
        hexed = lambda values: [float(v).hex() for v in values]
        return {"unit": hexed(self.unit), "offset": hexed(self.offset), "names": list(self.names),
                "ops": [{"op": o.op, "operand": hexed(o.operand)} for o in self.ops]}

    @classmethod
    def from_json(cls, d) -> "FloatTail":
        """ValueError or TypeError names what is malformed."""
        def floats(values, what):
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise TypeError(f"float tail: {what} must be a list of float64 in hex")
            try:
                return tuple(float.fromhex(v) for v in values)
            except ValueError:
                raise ValueError(f"float tail: {what} holds a value that is no float64 in hex") from None
        if not isinstance(d, dict) or not isinstance(d.get("ops"), list) or \
                not isinstance(d.get("names"), list) or not all(isinstance(n, str) for n in d["names"]):
            raise TypeError("float tail: an object of unit, offset, ops and names expected")
        ops = []
        for o in d["ops"]:
            if not isinstance(o, dict) or not isinstance(o.get("op"), str):
                raise TypeError("float tail: each op is an object {op, operand}")
            ops.append(TailOp(o["op"], floats(o.get("operand"), f"{o['op']}'s operand")))
        return cls(floats(d.get("unit"), "unit"), floats(d.get("offset"), "offset"), tuple(ops),
                   tuple(d["names"]))
