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

from ..fixedpoint.core import (DOMAIN_LIMIT, QUOTIENT_ESTIMATE_LIMIT, fit_overflow,
                               floor_divide, magnitude_max, ratio_rounded, requantize,
                               round_quotient, sqrt_rounded)
from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow, Rounding
from .registers import Events, Output, align, input_stage, output_stage


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
