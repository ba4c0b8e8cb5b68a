"""Nearest-neighbour upsampling by integer factors (ONNX Resize/Upsample, mode nearest, with
integer scales): every value repeated, exactly, on its grid.

    y[n, c, i, j] = x[n, c, i // s_h, j // s_w]            docs/arithmetic.md section 9
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ...fixedpoint.format import Format
from ..ranges import same_range
from ..geometry import check_plane
from ..registers import Events, Output, check_ints
from ..spec import OpSpec


@dataclasses.dataclass(frozen=True)
class UpsampleParams:
    scale: tuple = (2, 2)

    def __post_init__(self):
        check_ints("upsample", 1, scale=self.scale)


def upsample(x, x_frac, p: UpsampleParams, trace=False) -> Output:
    if x.ndim != 4:
        raise ValueError(f"upsample expects an N,C,H,W input, got shape {x.shape}")
    sh, sw = p.scale
    check_plane("upsample", x.shape[2] * sh, x.shape[3] * sw)
    q = np.repeat(np.repeat(x, sh, axis=2), sw, axis=3)
    return Output(q, Format(None, x_frac), Events(), {"output": q} if trace else {},
                  np.zeros(q.shape, np.uint8))


SPECS = (OpSpec("upsample", UpsampleParams, lambda p, a, ins, t: upsample(*ins[0], p, t), same_range),)
