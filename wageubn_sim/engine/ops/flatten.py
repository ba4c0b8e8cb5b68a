"""Flatten from the channel axis on: (N, C, H, W) -> (N, C*H*W), the values as they are."""
from __future__ import annotations

import dataclasses

import numpy as np

from ...fixedpoint.format import FixedArray, Format
from ..ranges import same_range
from ..registers import Events, Output
from ..spec import OpSpec


@dataclasses.dataclass(frozen=True)
class FlattenParams:
    start_dim: int = 1

    def __post_init__(self):
        if self.start_dim != 1 or isinstance(self.start_dim, bool):
            raise ValueError(f"flatten: start_dim={self.start_dim!r}; the engine flattens from 1")


def flatten(x, x_frac, p: FlattenParams, trace=False) -> Output:
    q = x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # -1 fails on an empty batch
    return Output(q, Format(None, x_frac), Events(), {"output": q} if trace else {},
                  np.zeros(q.shape, np.uint8))


def _backward(p, arrays, ins, out, error):
    return [FixedArray(error.q.reshape(ins[0][0].shape), error.frac_bits)], {}


SPECS = (OpSpec("flatten", FlattenParams, lambda p, a, ins, t: flatten(*ins[0], p, t), same_range,
                planned=True, backward=_backward),)
