"""Plain int64 numpy references of layer arithmetic, for tests only."""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def int_windows(x, kernel, stride, padding, dilation, pad_value=0):
    """x: N,C,H,W int64 -> N,C,OH,OW,KH,KW windows."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel, stride, padding, dilation))
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    win = sliding_window_view(x, (span_h, span_w), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    return win


def int_conv2d(x, w, stride=1, padding=0, dilation=1, groups=1):
    """Exact int64 convolution (cross-correlation), N,C,H,W x O,C/g,KH,KW."""
    win = int_windows(x, w.shape[2:], stride, padding, dilation)
    n, c = x.shape[:2]
    o = w.shape[0]
    cg, og = c // groups, o // groups
    out = []
    for g in range(groups):
        out.append(np.einsum("nchwij,ocij->nohw", win[:, g * cg:(g + 1) * cg],
                             w[g * og:(g + 1) * og], dtype=np.int64))
    return np.concatenate(out, axis=1)


def int_adder2d(x, w, stride=1, padding=0, dilation=1):
    win = int_windows(x, w.shape[2:], stride, padding, dilation)
    diff = win[:, None] - w[None, :, :, None, None]
    return -np.abs(diff).sum(axis=(2, 5, 6))


def align(q, frac, to_frac):
    """q at 2**-frac, exactly, at the finer 2**-to_frac (to_frac >= frac)."""
    assert to_frac >= frac
    return q.astype(np.int64) << (to_frac - frac)


def int_adder2d_backward(x, w, e, stride=1, padding=0, dilation=1, limit=1):
    """AdderNet's backward on one grid, by the definition: dw = sum (x - w) e over windows
    (padding reads 0), dx = sum over windows of clip(w - x, -limit, limit) e onto each cell."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = map(_pair, (stride, padding, dilation))
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp = np.zeros(xp.shape, np.int64)
    grad_w = np.zeros(w.shape, np.int64)
    for b, oc, y, xo in np.ndindex(e.shape):
        ev = int(e[b, oc, y, xo])
        for ci, i, j in np.ndindex(c, kh, kw):
            yy, xx = y * sh + i * dh, xo * sw + j * dw
            diff = int(xp[b, ci, yy, xx]) - int(w[oc, ci, i, j])
            grad_w[oc, ci, i, j] += diff * ev
            dxp[b, ci, yy, xx] += min(max(-diff, -limit), limit) * ev
    return dxp[:, :, ph:ph + h, pw:pw + wd], grad_w
