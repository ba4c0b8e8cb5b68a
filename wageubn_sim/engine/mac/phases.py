"""Stride-phase planes: a conv's input laid out so that each tap of each output row reads one
contiguous run (`mac_taps`), shared by the narrow MAC loop and the execution plan's convs."""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True)
def fill_stride_phases(x, ph, pw, sh, sw, pitch, out):
    """One channel: out[r*sw + s, (Y//sh)*pitch + X//sw] = x[Y - ph, X - pw] for the padded
    coordinates Y = r (mod sh), X = s (mod sw); the rest of ``out`` is left as it is (zero).
    Phase by phase, so the divisions are per row, not per value (a divide per value was most
    of a small conv's time), and with sw = 1 each row is a contiguous copy."""
    h, w = x.shape
    for r in range(sh):
        first_row = max(0, -(-(ph - r) // sh))  # the first padded row Y = r + sh*a inside x
        for s in range(sw):
            first_col = max(0, -(-(pw - s) // sw))
            col = s + sw * first_col - pw  # x's first column in this phase
            count = max(0, -(-(w - col) // sw))
            plane = out[r * sw + s]
            a = first_row
            y = r + sh * a - ph
            while y < h:
                row, source = plane[a * pitch + first_col:a * pitch + first_col + count], x[y, col:]
                if sw == 1:  # contiguous: it vectorizes
                    for j in range(count):
                        row[j] = source[j]
                else:
                    for j in range(count):
                        row[j] = source[j * sw]
                a += 1
                y += sh



@njit(cache=True, parallel=True)
def _fill_stride_phases(x, ph, pw, sh, sw, pitch, out):
    """`fill_stride_phases` of every channel of every image, in parallel."""
    n, c = x.shape[:2]
    phases = sh * sw
    for job in prange(n * c):
        b, ch = job // c, job % c
        fill_stride_phases(x[b, ch], ph, pw, sh, sw, pitch, out[b, ch * phases:(ch + 1) * phases])



def stride_phase_geometry(h, w, padding, stride) -> tuple:
    """(rows, pitch) of a stride phase plane of an h x w input: the padded input's rows and
    columns per phase, Hq = ceil(Hp/sh) and Wq = ceil(Wp/sw). A plane holds (Hq + 1) * Wq
    values: one zero row more, so that a tap's run may pass the last row's end."""
    (ph, pw), (sh, sw) = padding, stride
    return -(-(h + 2 * ph) // sh), -(-(w + 2 * pw) // sw)



def stride_phase_planes(x, padding, stride, dtype):
    """The input x (N, C, H, W), zero-padded, as (N, C*sh*sw, (Hq+1)*Wq) stride phases: plane
    c*sh*sw + r*sw + s holds the padded x[:, c, r::sh, s::sw] flat at pitch Wq = ceil(Wp/sw)
    (`stride_phase_geometry`). Returns (planes, Wq)."""
    (ph, pw), (sh, sw) = padding, stride
    n, c, h, w = x.shape
    hq, wq = stride_phase_geometry(h, w, padding, stride)
    planes = np.zeros((n, c * sh * sw, (hq + 1) * wq), dtype)
    _fill_stride_phases(x, ph, pw, sh, sw, wq, planes)
    return planes, wq



def mac_taps(cg, kh, kw, sh, sw, dh, dw, pitch, kernel_major):
    """For each MAC t in hardware order: its (c, i, j), the stride-phase plane it reads
    (channel c's phase ((i*dh) % sh, (j*dw) % sw)) and its offset in that plane."""
    c, i, j = np.meshgrid(np.arange(cg), np.arange(kh), np.arange(kw), indexing="ij")
    if kernel_major:  # t = (i, j, c)
        c, i, j = (a.transpose(1, 2, 0) for a in (c, i, j))
    c, i, j = c.ravel(), i.ravel(), j.ravel()
    plane = c * (sh * sw) + (i * dh) % sh * sw + (j * dw) % sw
    offset = (i * dh) // sh * pitch + (j * dw) // sw
    return np.stack([c, i, j], axis=1), plane, offset
