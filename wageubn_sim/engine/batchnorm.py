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


@njit(cache=True, parallel=True)
def _channel_sums(a, b, sums, hi, lo):
    """Per channel of a, b (N, C, P int64): sums[c] = sum a (int64), and sum a*b in 128 bits
    as hi[c] * 2**64 + lo[c] (lo unsigned). Every product must fit int64 (the caller checks)."""
    n, c, p = a.shape
    for ch in prange(c):
        total = np.int64(0)
        high = np.int64(0)
        low = np.uint64(0)
        for i in range(n):
            for j in range(p):
                total += a[i, ch, j]
                product = a[i, ch, j] * b[i, ch, j]
                new = low + np.uint64(product)  # the product's two's complement bits
                high += np.int64(new < low) - np.int64(product < 0)  # carry, sign extension
                low = new
        sums[ch] = total
        hi[ch] = high
        lo[ch] = low


def channel_sums(a: np.ndarray, b: np.ndarray) -> tuple[list, list]:
    """(sum a, sum a * b) per channel of two (N, C, H, W) integer arrays, exact, as Python ints:
    products in int64 (bounds checked), sums in 128 bits. Falls back to Python integers where a
    product could leave int64."""
    n, c = a.shape[:2]
    a3 = np.ascontiguousarray(a, dtype=np.int64).reshape(n, c, -1)
    b3 = np.ascontiguousarray(b, dtype=np.int64).reshape(n, c, -1)
    if a3.size == 0:
        return [0] * c, [0] * c
    if magnitude_max(a3) * magnitude_max(b3) >= 1 << 63 or a3.shape[0] * a3.shape[2] >= 1 << 62:
        ao, bo = a3.astype(object), b3.astype(object)
        return ([int(v) for v in ao.sum(axis=(0, 2))], [int(v) for v in (ao * bo).sum(axis=(0, 2))])
    sums, hi, lo = np.empty(c, np.int64), np.empty(c, np.int64), np.empty(c, np.uint64)
    _channel_sums(a3, b3, sums, hi, lo)
    return [int(v) for v in sums], [int(h) * (1 << 64) + int(l) for h, l in zip(hi, lo)]


def batch_statistics(x: np.ndarray, x_frac: int, mean_fmt: Format, std_fmt: Format,
                     eps_lsbs: int, overflow=Overflow.SAT_SYM) -> tuple[np.ndarray, np.ndarray]:
    """The training-mode statistics registers of one batch, per channel (docs §8):

        mean_q = round(S1 / M)                  on mean_fmt's grid, then its overflow
        std_q  = round(sqrt(S2/M - (S1/M)**2))  on std_fmt's grid, then its overflow, + eps_lsbs

    with S1 = sum x, S2 = sum x*x over N, H, W (M values; biased variance), summed exactly
    (`channel_sums`) and rounded half to even once each on Python integers.
    """
    if x.ndim != 4:
        raise ValueError(f"batch statistics need an N,C,H,W input, got {x.shape}")
    m = x.shape[0] * x.shape[2] * x.shape[3]
    if m == 0:
        raise ValueError("batch statistics of an empty batch are undefined")
    fm, fs = mean_fmt.frac_bits, std_fmt.frac_bits
    means, stds = [], []
    for s1, s2 in zip(*channel_sums(x, x)):
        # mean = s1 / (m * 2**fx); on 2**-fm: round(s1 * 2**fm / (m * 2**fx))
        num, den = s1 << max(fm - x_frac, 0), m << max(x_frac - fm, 0)
        means.append(ratio_rounded(num, den))  # exact, any size
        # var * 2**(2 fs) = (m*s2 - s1**2) * 2**(2 fs) / (m**2 * 2**(2 fx))
        shift = 2 * fs - 2 * x_frac
        stds.append(sqrt_rounded((m * s2 - s1 * s1) << max(shift, 0), (m * m) << max(-shift, 0)))
    mean_q = requantize(np.array(means, dtype=np.int64), fm, mean_fmt, Rounding.HALF_EVEN, overflow)
    std_q = requantize(np.array(stds, dtype=np.int64), fs, std_fmt, Rounding.HALF_EVEN, overflow)
    return mean_q, std_q + eps_lsbs
