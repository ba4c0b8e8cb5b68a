"""BatchNorm2d inference, the official UBN datapath on integers (docs/arithmetic.md §8):

    d    = x - mean                         at F = max(fx, f_mean), exact
    xhat = round(d * 2**(f_std + f_xhat - F) / std)   a rounding division per element
    y    = xhat * gamma + beta              at f_xhat + f_gamma (beta aligned), exact

``std`` already holds Q(sqrt(running_var)) + eps_q, so it is a positive integer per channel.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from numba import njit, prange

from ...fixedpoint.arrays import magnitude_max, requantize
from ...fixedpoint.division import (QUOTIENT_ESTIMATE_LIMIT, floor_divide, ratio_rounded,
                                    round_quotient, sqrt_rounded)
from ...fixedpoint.format import FixedArray, Format
from ...fixedpoint.modes import Overflow, Rounding
from ...fixedpoint.scalar import DOMAIN_LIMIT, fit_overflow
from ...fixedpoint.scale import scale_exponent_of_ints
from ..ranges import fit_range, input_register_range
from ..registers import Events, Output, align, input_stage, output_stage
from ..spec import OpSpec


@dataclasses.dataclass(frozen=True)
class BatchNormParams:
    mean_fmt: Format
    std_fmt: Format
    xhat_fmt: Format  # unbounded unless iostrict
    gamma_fmt: Format | None = None  # None: no affine scale
    beta_fmt: Format | None = None  # None: no shift
    input_register: Format | None = None
    out_fmt: Format | None = None
    rounding: Rounding = Rounding.HALF_EVEN
    overflow: Overflow = Overflow.SAT_SYM


@njit(cache=True, inline="always")
def _batchnorm_row(x_row, x_shift, m, up_shift, d, inv, small_quotients, xhat_bits, rounding,
                   overflow, g, be, keep_xhat, xhat_row, y_row, flag_row):
    """One channel row; returns its (ties, xhat overflows). Called with ``small_quotients`` a
    literal so that the division's rare fix-up branch leaves the loop (it vectorizes)."""
    ties = 0
    overflows = 0
    for i in range(x_row.size):
        p = ((x_row[i] << x_shift) - m) << up_shift
        q, r = floor_divide(p, d, inv, small_quotients)
        xhat = round_quotient(q, r, d, p, rounding)
        fitted = fit_overflow(xhat, xhat_bits, True, overflow)
        tie = 2 * r == d
        over = fitted != xhat
        if keep_xhat:
            xhat_row[i] = fitted
        y_row[i] = fitted * g + be
        flag_row[i] = tie | (over << 1)  # TIE | OVERFLOWED
        ties += tie
        overflows += over
    return ties, overflows


@njit(cache=True, parallel=True)
def _batchnorm(x, x_shift, mean, shift, std, xhat_bits, rounding, overflow, gamma, beta,
               beta_shift, small_quotients, keep_xhat, xhat_out, y_out, flags):
    """Per element: d = (x << x_shift) - mean; xhat = round(d * 2**shift / std), fitted to
    xhat_bits (0: unbounded); y = xhat * gamma + (beta << beta_shift). xhat is stored only
    with ``keep_xhat`` (tracing). Returns the counts (ties, xhat overflows)."""
    n, c, pixels = x.shape
    up_shift = max(shift, 0)
    ties = 0
    overflows = 0
    for job in prange(n * c):
        b, ch = job // c, job % c
        d = std[ch] << -shift if shift < 0 else std[ch]
        x_row, m, inv, g, be = x[b, ch], mean[ch], 1.0 / d, gamma[ch], beta[ch] << beta_shift
        xhat_row = xhat_out[b, ch] if keep_xhat else xhat_out[0, 0]
        if small_quotients:
            t, o = _batchnorm_row(x_row, x_shift, m, up_shift, d, inv, True, xhat_bits, rounding,
                                  overflow, g, be, keep_xhat, xhat_row, y_out[b, ch], flags[b, ch])
        else:
            t, o = _batchnorm_row(x_row, x_shift, m, up_shift, d, inv, False, xhat_bits,
                                  rounding, overflow, g, be, keep_xhat, xhat_row, y_out[b, ch],
                                  flags[b, ch])
        ties += t
        overflows += o
    return ties, overflows


def batchnorm2d(x, x_frac, mean, std, gamma, beta, p: BatchNormParams, trace=False) -> Output:
    if x.ndim != 4 or mean.shape != (x.shape[1],) or std.shape != mean.shape:
        raise ValueError(f"BatchNorm2d: input {x.shape} and statistics {mean.shape}, {std.shape} "
                         "do not fit")
    if std.size and std.min() <= 0:
        raise ValueError("BatchNorm2d: the std register must be positive (it includes eps)")
    stages = {}
    x, x_frac, registers = input_stage(x, x_frac, p.input_register, p.rounding)
    frac = max(x_frac, p.mean_fmt.frac_bits)
    mean_al = align(mean, p.mean_fmt.frac_bits, frac)
    shift = p.std_fmt.frac_bits + p.xhat_fmt.frac_bits - frac
    # the domain: |x - mean| * 2**shift and std * 2**-shift stay below 2**61
    span = (magnitude_max(x) << (frac - x_frac)) + int(np.abs(mean_al).max(initial=0))
    if ((span << max(shift, 0)) >= DOMAIN_LIMIT
            or (int(std.max(initial=1)) << max(-shift, 0)) >= DOMAIN_LIMIT):
        raise OverflowError("BatchNorm2d: the normalisation leaves the 62-bit domain; "
                            "narrow the input format")
    y_frac = p.xhat_fmt.frac_bits
    gamma_ = np.ones(mean.shape, np.int64) if p.gamma_fmt is None else gamma
    if p.gamma_fmt is not None:
        y_frac += p.gamma_fmt.frac_bits
    beta_shift = 0
    beta_ = np.zeros(mean.shape, np.int64) if p.beta_fmt is None else beta
    if p.beta_fmt is not None:
        to = max(y_frac, p.beta_fmt.frac_bits)
        if to > y_frac:  # beta is finer than the product: scale the product (exact) instead
            gamma_ = gamma_ << (to - y_frac)
        beta_shift, y_frac = to - p.beta_fmt.frac_bits, to
    n, c = x.shape[:2]
    x3 = np.ascontiguousarray(x).reshape(n, c, x.shape[2] * x.shape[3])  # -1 fails on an empty batch
    xhat = np.empty_like(x3) if trace else np.empty((1, 1, 1), np.int64)
    y = np.empty_like(x3)
    flags = np.empty(x3.shape, np.uint8)
    ties, overflows = _batchnorm(
        x3, frac - x_frac, mean_al, shift, std.astype(np.int64), p.xhat_fmt.bits or 0,
        int(p.rounding), int(p.overflow), gamma_.astype(np.int64), beta_.astype(np.int64),
        beta_shift, (span << max(shift, 0)) < QUOTIENT_ESTIMATE_LIMIT, trace, xhat, y, flags)
    y, flags = y.reshape(x.shape), flags.reshape(x.shape)
    registers["xhat"] = Events.of_requantize(
        {"ties": int(ties), "overflowed": int(overflows), "underflows": 0}, p.overflow)
    if trace:
        stages.update(input=x, xhat=xhat.reshape(x.shape), affine=y)
    q, fmt, registers["output"], flags = output_stage(y, y_frac, p.out_fmt, p.rounding, p.overflow,
                                                      trace, stages, flags)
    return Output(q, fmt, Events.total(registers.values()), stages, flags, registers)


@njit(cache=True, inline="always")
def _add128(high, low, v):
    """(high, low) + v for a 128-bit sum high * 2**64 + low (low unsigned) and an int64 v:
    v's two's complement bits added to low, the carry and v's sign extension to high."""
    new = low + np.uint64(v)
    return high + np.int64(new < low) - np.int64(v < 0), new


_LIMB = 31  # a = a1 * 2**31 + a0, 0 <= a0 < 2**31: limb products of domain values fit int64


@njit(cache=True, inline="always")
def _narrow_sums(a, b, ch, out):
    high, low, high_ab, low_ab = np.int64(0), np.uint64(0), np.int64(0), np.uint64(0)
    for i in range(a.shape[0]):
        for j in range(a.shape[2]):
            u = a[i, ch, j]
            high, low = _add128(high, low, u)
            high_ab, low_ab = _add128(high_ab, low_ab, u * b[i, ch, j])
    out[ch, 0], out[ch, 1], out[ch, 2], out[ch, 3] = high, np.int64(low), high_ab, np.int64(low_ab)


@njit(cache=True, inline="always")
def _wide_sums(a, b, ch, out):
    mask = np.int64((1 << _LIMB) - 1)
    h0, l0, h1, l1 = np.int64(0), np.uint64(0), np.int64(0), np.uint64(0)
    h2, l2, h3, l3 = np.int64(0), np.uint64(0), np.int64(0), np.uint64(0)
    for i in range(a.shape[0]):
        for j in range(a.shape[2]):
            u, v = a[i, ch, j], b[i, ch, j]
            u1, u0, v1, v0 = u >> _LIMB, u & mask, v >> _LIMB, v & mask
            h0, l0 = _add128(h0, l0, u)
            h1, l1 = _add128(h1, l1, u1 * v1)
            h2, l2 = _add128(h2, l2, u1 * v0 + u0 * v1)
            h3, l3 = _add128(h3, l3, u0 * v0)
    out[ch, 0], out[ch, 1], out[ch, 2], out[ch, 3] = h0, np.int64(l0), h1, np.int64(l1)
    out[ch, 4], out[ch, 5], out[ch, 6], out[ch, 7] = h2, np.int64(l2), h3, np.int64(l3)


@njit(cache=True, parallel=True)
def _channel_sums(a, b, wide, out):
    """Per channel of a, b (N, C, P int64), 128-bit sums as out[c, 2 s] * 2**64 + out[c, 2 s + 1]
    (the low word's bits as unsigned): s = 0, sum a; s = 1, sum a*b when every product fits
    int64 (``wide`` False). ``wide``: |values| < 2**62, products split in 31-bit limbs,
    a*b = a1 b1 2**62 + (a1 b0 + a0 b1) 2**31 + a0 b0 with every limb product below
    2**62 in magnitude (|a1|, |b1| < 2**31, 0 <= a0, b0 < 2**31): s = 1, 2, 3 sum those three."""
    for ch in prange(a.shape[1]):
        if wide:
            _wide_sums(a, b, ch, out)
        else:
            _narrow_sums(a, b, ch, out)


def _ints128(high: np.ndarray, low: np.ndarray) -> list:
    """The 128-bit values high * 2**64 + low (low's bits unsigned) as Python ints; those whose
    high word only extends the low one's sign are the low word itself (no big-int work)."""
    values = low.tolist()
    for i in np.flatnonzero(high != low >> 63).tolist():
        values[i] = int(high[i]) * (1 << 64) + (values[i] & ((1 << 64) - 1))
    return values


def channel_sums(a: np.ndarray, b: np.ndarray) -> tuple[list, list]:
    """(sum a, sum a * b) per channel of two (N, C, H, W) integer arrays below 2**62,
    exact, as Python ints: sums in 128 bits, products in int64 where they fit (bounds
    checked), else from 31-bit limbs (`_channel_sums`)."""
    n, c = a.shape[:2]
    pixels = int(np.prod(a.shape[2:]))  # not -1: an empty batch has no size to divide
    a3 = np.ascontiguousarray(a, dtype=np.int64).reshape(n, c, pixels)
    b3 = np.ascontiguousarray(b, dtype=np.int64).reshape(n, c, pixels)
    if a3.size == 0:
        return [0] * c, [0] * c
    a_max, b_max = magnitude_max(a3), magnitude_max(b3)
    if max(a_max, b_max) >= 1 << 2 * _LIMB:  # beyond what two limbs hold
        raise OverflowError("BatchNorm sums: a value reaches 2**62, beyond the domain")
    wide = a_max * b_max >= 1 << 63
    out = np.empty((c, 8), np.int64)
    _channel_sums(a3, b3, wide, out)
    sums, products = _ints128(out[:, 0], out[:, 1]), _ints128(out[:, 2], out[:, 3])
    if wide:
        middle, low = _ints128(out[:, 4], out[:, 5]), _ints128(out[:, 6], out[:, 7])
        products = [(p << 2 * _LIMB) + (m << _LIMB) + q for p, m, q in zip(products, middle, low)]
    return sums, products


def batch_statistics(x: np.ndarray, x_frac: int, mean_fmt: Format, std_fmt: Format,
                     eps_lsbs: int, overflow=Overflow.SAT_SYM, sums=None) -> tuple[np.ndarray, np.ndarray]:
    """The training-mode statistics registers of one batch, per channel (docs §8):

        mean_q = round(S1 / M)                  on mean_fmt's grid, then its overflow
        std_q  = round(sqrt(S2/M - (S1/M)**2))  on std_fmt's grid, then its overflow, + eps_lsbs

    with S1 = sum x, S2 = sum x*x over N, H, W (M values; biased variance), summed exactly
    (`channel_sums`, or ``sums`` = its (S1, S2) when the caller has them) and rounded half to
    even once each on Python integers.
    """
    if x.ndim != 4:
        raise ValueError(f"batch statistics need an N,C,H,W input, got {x.shape}")
    m = x.shape[0] * x.shape[2] * x.shape[3]
    if m == 0:
        raise ValueError("batch statistics of an empty batch are undefined")
    fm, fs = mean_fmt.frac_bits, std_fmt.frac_bits
    means, stds = [], []
    for s1, s2 in zip(*(channel_sums(x, x) if sums is None else sums)):
        # mean = s1 / (m * 2**fx); on 2**-fm: round(s1 * 2**fm / (m * 2**fx))
        num, den = s1 << max(fm - x_frac, 0), m << max(x_frac - fm, 0)
        means.append(ratio_rounded(num, den))  # exact, any size
        # var * 2**(2 fs) = (m*s2 - s1**2) * 2**(2 fs) / (m**2 * 2**(2 fx))
        shift = 2 * fs - 2 * x_frac
        stds.append(sqrt_rounded((m * s2 - s1 * s1) << max(shift, 0), (m * m) << max(-shift, 0)))
    mean_q = requantize(np.array(means, dtype=np.int64), fm, mean_fmt, Rounding.HALF_EVEN, overflow)
    std_q = requantize(np.array(stds, dtype=np.int64), fs, std_fmt, Rounding.HALF_EVEN, overflow)
    return mean_q, std_q + eps_lsbs


# ---- backward --------------------------------------------------------------------------------
# BatchNorm2d training backward on integers (docs/arithmetic.md §10).
#
# The official code differentiates the float statistics; hardware has only the registers, so
# the contract differentiates x_hat = (x - mean_q) / std_q with the registers in place of the
# float statistics (straight-through, as every WAGEUBN quantizer). Per channel, with the output
# error e (2**-fe), g = e * gamma_q (2**-fg, fg = fe + f_gamma) and d = x - mean_q (exact):
#
#     d_beta  = sum e                      exact, 2**-fe
#     d_gamma = sum e * xhat_q             exact, 2**-(fe + f_xhat)
#     dx_i    = (g_i - mean(g) - d_i/std_q * mean(g * d/std_q)) / std_q
#             = ((M g_i - sum g) std_q**2 - d_i sum(g d)) / (M std_q**3)
#
# dx is rounded half to even, once, onto 2**-(f_gamma + DX_BITS - e_R), where R = 2**e_R is the
# power-of-two scale of the error (§5): a grid set by the error's values, not by how they are
# represented, so that any exact path (the torch twin included) lands on the same integers. It is
# E1's grid for the error (7 bits below R) times gamma's, with 8 guard bits; E2 re-grids it at
# the layer below. All sums are exact (Python integers).

DX_BITS = 15  # E1's 7 fractional bits below R, and 8 guard bits
_U = 2.0 ** -53  # float64's unit roundoff


def batchnorm2d_backward(x: FixedArray, error: FixedArray, mean_q: FixedArray, std_q: FixedArray,
                         xhat_q: FixedArray, gamma_q: FixedArray | None = None,
                         always_exact: bool = False):
    """(dx, d_gamma, d_beta) as FixedArrays; std_q holds eps_q already. ``always_exact``
    computes every dx on Python integers (the reference the fast path is tested against)."""
    if x.q.ndim != 4 or x.q.shape != error.q.shape or x.q.shape != xhat_q.q.shape:
        raise ValueError(f"BatchNorm backward: input {x.q.shape}, error {error.q.shape} and xhat "
                         f"{xhat_q.q.shape} must be one N,C,H,W shape")
    if std_q.q.size and std_q.q.min() <= 0:
        raise ValueError("BatchNorm backward: the std register must be positive")
    n, c, h, w = x.q.shape
    m = n * h * w
    fe = error.frac_bits
    f_gamma = gamma_q.frac_bits if gamma_q is not None else 0
    fg = fe + f_gamma
    fd = max(x.frac_bits, mean_q.frac_bits)
    f_dx = f_gamma + DX_BITS - scale_exponent_of_ints(error.q, error.frac_bits)
    gamma = gamma_q.q if gamma_q is not None else np.ones(c, np.int64)
    if m == 0:  # an empty batch: no error to pass on, nothing summed
        zeros = np.zeros(c, np.int64)
        return (FixedArray(np.zeros(x.q.shape, np.int64), f_dx),
                FixedArray(zeros, fe + xhat_q.frac_bits), FixedArray(zeros.copy(), fe))
    g_max = magnitude_max(error.q) * magnitude_max(gamma)  # bounds |g| = |e gamma|
    if g_max >= DOMAIN_LIMIT:
        raise OverflowError("BatchNorm backward: error x gamma leaves the 62-bit domain")
    # d = x - mean_q on 2**-fd, formed element by element in the kernels: x << x_up - mean_al
    x_up = fd - x.frac_bits
    if x_up and magnitude_max(x.q) >= (1 << max(0, 61 - x_up)):
        raise OverflowError(f"aligning to {fd} fractional bits leaves the 62-bit domain")
    mean_al = [int(v) for v in align(mean_q.q, mean_q.frac_bits, fd)]
    gammas = [int(v) for v in gamma]
    # sums per channel, no g or d arrays: sum g = gamma sum e and
    # sum g d = gamma (sum(e x) 2**x_up - mean_al sum e)
    sum_e, d_gamma = channel_sums(error.q, xhat_q.q)
    sum_ex = channel_sums(error.q, x.q)[1]
    sum_g = [gm * se for gm, se in zip(gammas, sum_e)]
    sum_gd = [gm * ((sex << x_up) - ma * se) for gm, sex, ma, se in zip(gammas, sum_ex, mean_al, sum_e)]
    dx = _dx_rounded(error.q, x.q, gammas, x_up, mean_al, g_max, sum_g, sum_gd,
                     [int(v) for v in std_q.q], m, fd, std_q.frac_bits, fg, f_dx, always_exact)
    return (FixedArray(dx, f_dx), FixedArray(np.array(d_gamma, dtype=object).astype(np.int64),
                                             fe + xhat_q.frac_bits),
            FixedArray(np.array(sum_e, dtype=object).astype(np.int64), fe))


@njit(cache=True, parallel=True)
def _dx_estimated(e, x, gamma, x_up, mean_al, m, sum_g, k1, k2, exact, dx, near_tie):
    """The float64 pass of `_dx_rounded` over (N, C, P) arrays, with g = e gamma and
    d = x 2**x_up - mean_al formed per element: dx where the estimate decides the rounding,
    near_tie = 1 where it does not (the exact way decides there). Returns how many are near
    a tie."""
    n, c, p = e.shape
    count = 0
    for job in prange(n * c):
        b, ch = job // c, job % c
        a1, a2, skip, gm, mean = k1[ch], k2[ch], exact[ch], gamma[ch], mean_al[ch]
        for i in range(p):
            tf = np.float64(m * (e[b, ch, i] * gm) - sum_g[ch])
            df = np.float64((x[b, ch, i] << x_up) - mean)
            estimate = tf * a1 - df * a2
            bound = 8 * _U * (abs(tf) * abs(a1) + abs(df) * abs(a2))
            floor = np.floor(estimate)
            near = skip or abs(estimate - floor - 0.5) <= bound or abs(estimate) >= 2.0 ** 50
            near_tie[b, ch, i] = near
            count += near
            dx[b, ch, i] = 0 if near else np.int64(floor + (estimate - floor > 0.5))
    return count


def _dx_rounded(e, x, gamma, x_up, mean_al, g_max, sum_g, sum_gd, std, m, fd, fs, fg, f_dx,
                always_exact):
    """dx_i = ((m g_i - sum g) s**2 - d_i sum(g d)) / (m s**3), on 2**-f_dx, rounded half to
    even (docs §10), per channel, with g_i = e_i gamma and d_i = x_i 2**x_up - mean_al (the
    caller checked that both stay in the domain; |g| <= g_max). With t_i = m g_i - sum g it
    is t_i K1 - d_i K2, where K1 = 2**(fs - fg + f_dx) / (m s) and
    K2 = sum(g d) 2**(3 fs - fg - 2 fd + f_dx) / (m s**3). In float64 (K1, K2 correctly
    rounded: Python's int division), the estimate is within 8u (|t K1| + |d K2|) of the true
    value (four roundings of at most u relative each, with room); where no half-integer lies
    within that distance, the float rounding is the true one, and the other elements (near a
    tie, or too large) are computed on Python integers. t is formed in int64 where
    m max|g| + |sum g| < 2**63 (else every element goes the exact way)."""
    n, c = e.shape[:2]
    k1 = np.empty(c)
    k2 = np.empty(c)
    exact = np.zeros(c, bool)
    a, b = fs - fg + f_dx, 3 * fs - fg - 2 * fd + f_dx
    for ch in range(c):
        try:  # int / int is correctly rounded in Python, whatever the sizes
            k1[ch] = (1 << max(a, 0)) / ((m * std[ch]) << max(-a, 0))
            k2[ch] = (sum_gd[ch] << max(b, 0)) / ((m * std[ch] ** 3) << max(-b, 0))
        except OverflowError:  # beyond float64: this channel goes the exact way
            k1[ch], k2[ch], exact[ch] = 0.0, 0.0, True
    if always_exact or m * g_max + max(map(abs, sum_g), default=0) >= 1 << 63:
        exact[:] = True
    sums = np.array([v if not ex else 0 for v, ex in zip(sum_g, exact)], dtype=np.int64)
    e3 = np.ascontiguousarray(e, dtype=np.int64).reshape(n, c, int(np.prod(e.shape[2:])))
    x3 = np.ascontiguousarray(x, dtype=np.int64).reshape(e3.shape)
    dx = np.empty(e3.shape, np.int64)
    near_tie = np.empty(e3.shape, np.bool_)
    near = _dx_estimated(e3, x3, np.array(gamma, np.int64), x_up, np.array(mean_al, np.int64), m,
                         sums, k1, k2, exact, dx, near_tie)
    dx, near_tie = dx.reshape(e.shape), near_tie.reshape(e.shape)
    for i in zip(*np.nonzero(near_tie)) if near else ():  # the exact way, on Python integers
        ch = i[1]
        s = std[ch]
        g_i, d_i = int(e[i]) * gamma[ch], (int(x[i]) << x_up) - mean_al[ch]
        numerator = (m * g_i - sum_g[ch]) * (s * s << (2 * fd)) - d_i * (sum_gd[ch] << (2 * fs))
        shift = fs - fg - 2 * fd + f_dx  # dx = numerator * 2**shift / (m s**3)
        q = ratio_rounded(numerator << max(shift, 0), (m * s ** 3) << max(-shift, 0))
        if not -DOMAIN_LIMIT <= q < DOMAIN_LIMIT:
            raise OverflowError("BatchNorm backward: dx leaves the 62-bit domain")
        dx[i] = q
    return dx


# ---- the spec ---------------------------------------------------------------------------------

def batchnorm_arrays(p: BatchNormParams) -> dict:
    out = {"mean": p.mean_fmt, "std": p.std_fmt}
    out.update({role: fmt for role, fmt in (("gamma", p.gamma_fmt), ("beta", p.beta_fmt)) if fmt is not None})
    return out


def batchnorm_range(p: BatchNormParams, arrays, ins):
    """xhat = round(d * 2**shift / std) is monotone in d = x - mean: bounded by the floor and
    ceiling of the exact quotient at d's ends, then its register; then the affine per channel."""
    (x_lo, x_hi), fx = input_register_range(*ins[0], p.input_register, p.rounding)
    frac = max(fx, p.mean_fmt.frac_bits)
    mean = arrays["mean"].astype(object) * (1 << (frac - p.mean_fmt.frac_bits))
    d_lo, d_hi = (x_lo << (frac - fx)) - mean, (x_hi << (frac - fx)) - mean
    shift = p.std_fmt.frac_bits + p.xhat_fmt.frac_bits - frac
    std = arrays["std"].astype(object)
    up, down = (1 << max(shift, 0)), (1 << max(-shift, 0))
    h_lo = [(lo * up) // (s * down) for lo, s in zip(d_lo, std)]
    h_hi = [-((-hi * up) // (s * down)) for hi, s in zip(d_hi, std)]
    if p.xhat_fmt.bounded:
        fitted = [fit_range(a, b, 0, Format(p.xhat_fmt.bits, 0), Rounding.HALF_EVEN, p.overflow)
                  for a, b in zip(h_lo, h_hi)]
        h_lo, h_hi = [a for a, _ in fitted], [b for _, b in fitted]
    y_frac = p.xhat_fmt.frac_bits
    gamma = arrays["gamma"].astype(object) if "gamma" in arrays else np.ones(len(std), object)
    if p.gamma_fmt is not None:
        y_frac += p.gamma_fmt.frac_bits
    beta, beta_shift = np.zeros(len(std), object), 0
    if p.beta_fmt is not None:
        to = max(y_frac, p.beta_fmt.frac_bits)
        gamma = gamma * (1 << (to - y_frac))
        beta, beta_shift, y_frac = arrays["beta"].astype(object), to - p.beta_fmt.frac_bits, to
    beta = beta * (1 << beta_shift)
    lo = min(min(a * g, b * g) + be for a, b, g, be in zip(h_lo, h_hi, gamma, beta))
    hi = max(max(a * g, b * g) + be for a, b, g, be in zip(h_lo, h_hi, gamma, beta))
    return int(lo), int(hi), y_frac


def train_forward(p: BatchNormParams, arrays, ins, settings):
    """Training mode: normalised by the batch's own statistics (`batch_statistics`, its std
    register and eps from ``settings``), returned with (S1, S2, values per channel, frac) for
    the running averages."""
    x, frac = ins[0]
    if p.input_register is not None:
        x = requantize(x, frac, p.input_register, p.rounding, Overflow.SAT_SYM)
        frac = p.input_register.frac_bits
    sums = channel_sums(x, x)
    mean_q, std_q = batch_statistics(x, frac, p.mean_fmt, settings["std_register"],
                                     settings["eps_lsbs"], sums=sums)
    out = batchnorm2d(x, frac, mean_q, std_q, arrays.get("gamma"), arrays.get("beta"),
                      dataclasses.replace(p, input_register=None), trace=True)
    out.trace.update(input=x, mean=mean_q, std=std_q, input_frac=frac)
    return out, (sums, x.size // max(x.shape[1], 1), frac)


def _backward(p: BatchNormParams, arrays, ins, out, error):
    t = out.trace
    gamma = FixedArray(arrays["gamma"], p.gamma_fmt.frac_bits) if p.gamma_fmt else None
    dx, d_gamma, d_beta = batchnorm2d_backward(
        FixedArray(t["input"], t["input_frac"]), error, FixedArray(t["mean"], p.mean_fmt.frac_bits),
        FixedArray(t["std"], p.std_fmt.frac_bits), FixedArray(t["xhat"], p.xhat_fmt.frac_bits), gamma)
    return [dx], {"gamma": d_gamma, "beta": d_beta}


SPECS = (OpSpec("batchnorm2d", BatchNormParams,
                lambda p, a, ins, t: batchnorm2d(*ins[0], a["mean"], a["std"], a.get("gamma"), a.get("beta"), p, t),
                batchnorm_range, arrays=batchnorm_arrays,
                array_ranks={"mean": 1, "std": 1, "gamma": 1, "beta": 1},
                output_fields=("out_fmt", "rounding", "overflow"), input_register=True,
                inner_registers=lambda p, out: [("xhat", out.trace["xhat"], p.xhat_fmt)],
                trainable=("gamma", "beta"), grad_quantizer="G_BN", backward=_backward,
                train_forward=train_forward),)
