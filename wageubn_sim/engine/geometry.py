"""Window geometry, shared by every windowed op (conv, adder, pooling) and its backward: the
output size, how many of a window's taps lie inside the input, and the engine's bounds on a
plane, checked before anything of that size is made."""
from __future__ import annotations

import numpy as np

MAX_AXIS = 1 << 20  # positions along one axis of a plane
MAX_PLANE = 1 << 28  # positions in one plane (2 GiB of int64 per channel and input)


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Outputs along one axis: (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1,
    torch's rule (floor; no ceil mode). Zero or less: the window does not fit."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def cells_inside(size, k, s, pad, d, out_size) -> np.ndarray:
    """Per output position along one axis, how many of its window's taps lie inside the input:
    the taps i with 0 <= y*s - pad + i*d < size, counted in closed form."""
    start = np.arange(out_size, dtype=np.int64) * s - pad
    first = np.maximum(0, -(start // d))  # ceil(-start / d), at least 0
    stop = np.minimum(k, -((start - size) // d))  # ceil((size - start) / d), at most k
    return np.maximum(stop - first, 0)


def check_plane(owner: str, height: int, width: int) -> None:
    """Refuse an output plane beyond the engine's sizes before anything is allocated (a
    forged padding, stride or factor would otherwise ask for terabytes, or hang)."""
    if height > MAX_AXIS or width > MAX_AXIS or height * width > MAX_PLANE:
        raise ValueError(f"{owner}: an output plane of {height} x {width} positions is beyond the "
                         f"engine's {MAX_AXIS} per axis and {MAX_PLANE} per plane; check the "
                         "layer's padding, stride and factors")
