"""BatchNorm2d of the torch path: the official UBN forward (BatchNorm.py of yang-yk/wageubn).

    mean_q = Q(mean, k_mean)                 std_q = Q(sqrt(var), k_var) + eps_q
    xhat   = Q((x - mean_q) / std_q, k_xhat)  y = xhat * Q(gamma, k_w) + Q(beta, k_b)

Statistics are the batch's (biased variance, over N, H, W) in training and the running
averages in eval; running averages follow torch's momentum rule in float (the official code
keeps them in float too, with momentum 0.003). ``eps`` is honoured: eps_q is eps rounded to
the std grid, at least one LSB there (the official eps = 2**-15 for k_var = 16).
Backward through the statistics is float autograd, as in the official code; gamma and beta
gradients go through G_BN.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange
import torch.nn as nn

from ..fixedpoint.floats import quantize
from ..fixedpoint.format import Format
from ._layer import QuantModule, pick_widths
from .number import directquant

BATCHNORM_WIDTHS = {"weight": (8, 16), "bias": (8, 16), "mean": (16, 24), "var": (16, 24),
                    "xhat": (8, 16), "input": (12, 24), "output": (8, 16)}

_TINY_VARIANCE = 2.0 ** -80
_MAX_GRID_FRAC = 60


@njit(cache=True, parallel=True)
def _magnitude_max(v):
    """(max |v|, count of non-finite values) of a flat float array."""
    top, bad = 0.0, 0
    for i in prange(v.size):
        a = abs(np.float64(v[i]))
        bad += not np.isfinite(a)
        top = max(top, a)
    return top, bad


@njit(cache=True, parallel=True)
def _scaled_integers(v, scale, q):
    """q = v * scale as int64 (scale a power of two: exact); returns (count of values that are
    not integers there, the lowest set bit over the nonzero q, 0 if all are zero)."""
    off, lowest = 0, np.int64(1) << 62
    for i in prange(v.size):
        scaled = np.float64(v[i]) * scale
        whole = np.rint(scaled)
        off += whole != scaled
        n = np.int64(whole)
        q[i] = n
        lowest = min(lowest, n & -n if n != 0 else np.int64(1) << 62)
    return off, lowest if lowest != np.int64(1) << 62 else 0


def grid_integers(x: torch.Tensor):
    """(q, f): x as integers q (int64 numpy) on the coarsest grid 2**-f, 0 <= f <= 60, with
    |q| < 2**53; None when there is no such grid (a value off every grid, or spanning more
    than 53 bits, or not finite). From the finest grid the largest value allows, f_c (it fits
    53 bits there): x on it must be integers, and the lowest bit they set gives the coarsest
    grid. Two passes over x in its own dtype (float32 values are float64 values)."""
    v = x.detach().cpu().contiguous().numpy().reshape(-1)
    if v.size == 0:
        return None
    biggest, bad = _magnitude_max(v)
    if bad:
        return None
    if biggest == 0:
        return np.zeros(x.shape, np.int64), 0
    f_c = min(_MAX_GRID_FRAC, 53 - math.frexp(biggest)[1])  # biggest * 2**f_c < 2**53
    if f_c < 0:
        return None
    q = np.empty(v.size, np.int64)
    off, lowest = _scaled_integers(v, 2.0 ** f_c, q)  # exact: no value is below 2**-1074 * 2**f_c
    if off:
        return None
    shift = min(int(lowest).bit_length() - 1, f_c) if lowest else f_c
    if shift:
        q >>= shift
    return q.reshape(x.shape), f_c - shift


class BatchNorm2d(QuantModule, nn.BatchNorm2d):
    """nn.BatchNorm2d with the official UBN forward. ``var_*_bit_width`` sizes the std."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True,
                 iostrict=False, seed=0, **widths):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias)
        self._init_quant(pick_widths(BATCHNORM_WIDTHS, widths, "BatchNorm2d"), iostrict, seed)
        # training backward: the integer contract (docs §10) where the tensors lie on grids;
        # False gives the official float autograd through the statistics
        self.integer_backward = True

    def quantized_eps(self) -> float:
        k = self.var_dec_bit_width
        lsbs = max(int(quantize(np.float64(self.eps), Format(None, k - 1))), 1)
        return lsbs * 2.0 ** -(k - 1)

    def statistics_registers(self, mean, var):
        """(mean_q, std_q): the mean and the std (eps_q included) as held in their registers."""
        mean_q = self._register(mean, "mean")
        std_q = self._register(torch.sqrt(var.clamp_min(_TINY_VARIANCE)), "var") + self.quantized_eps()
        return mean_q, std_q

    def _exact_batch_registers(self, x, mean_q, std_q, on_grid):
        """In training, the contract's exact batch statistics (integer sums, one rounding each,
        `engine.ops.batchnorm.batch_statistics`) replace the float ones' values wherever the input
        lies on a dyadic grid, as it does between WAGEUBN layers; gradients stay those of the
        float statistics (straight-through, as in the official code). ``on_grid``: x as
        (integers, frac), from `grid_integers`, or None."""
        if on_grid is None:
            return mean_q, std_q
        from ..engine.ops.batchnorm import batch_statistics
        q, frac = on_grid
        mean_fmt, std_fmt = Format.from_seed(self.mean_dec_bit_width, self.mean_all_bit_width), \
            Format.from_seed(self.var_dec_bit_width, self.var_all_bit_width)
        eps_lsbs = round(self.quantized_eps() * 2.0 ** std_fmt.frac_bits)
        mean_i, std_i = batch_statistics(q, frac, mean_fmt, std_fmt, eps_lsbs)
        exact = [torch.from_numpy(v * 2.0 ** -f).to(mean_q) for v, f in
                 ((mean_i, mean_fmt.frac_bits), (std_i, std_fmt.frac_bits))]
        return (mean_q + (exact[0] - mean_q).detach(), std_q + (exact[1] - std_q).detach())

    def _statistics(self, x):
        use_batch = self.training or self.running_mean is None
        if not use_batch:
            return self.running_mean, self.running_var
        count = x.numel() // x.shape[1]
        if count == 0:
            raise ValueError("BatchNorm2d in training mode got an empty batch; batch statistics "
                             "need at least one value per channel")
        mean = x.mean((0, 2, 3))
        var = (x - mean[None, :, None, None]).square().mean((0, 2, 3))
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                          else self.momentum)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                self.running_var.lerp_(var.detach().to(self.running_var.dtype), factor)
        return mean, var

    def forward(self, input):
        self._check_input_dim(input)
        x = self._io(input, "input")
        mean_q, std_q = self.statistics_registers(*self._statistics(x))
        batch = self.training or self.running_mean is None
        on_grid = grid_integers(x) if batch else None
        if batch:
            mean_q, std_q = self._exact_batch_registers(x, mean_q, std_q, on_grid)
        xhat = (x - mean_q[None, :, None, None]) / std_q[None, :, None, None]
        xhat = self._register(xhat, "xhat") if self.iostrict else directquant(xhat, self.xhat_dec_bit_width)
        if self.affine:
            gamma = self._register(self._bn_gradient(self.weight), "weight")
            beta = (self._register(self._bn_gradient(self.bias), "bias") if self.bias is not None
                    else torch.zeros_like(gamma))
        if batch and self.integer_backward and on_grid is not None:
            if not self.affine:
                gamma, beta = torch.ones_like(mean_q), torch.zeros_like(mean_q)
            y = _IntegerBatchNorm.apply(x, mean_q.detach(), std_q.detach(), xhat.detach(), gamma, beta,
                                        self.mean_dec_bit_width - 1, self.var_dec_bit_width - 1,
                                        self.weight_dec_bit_width - 1 if self.affine else 0, on_grid)
            return self._io(y, "output")
        if self.affine:
            xhat = xhat * gamma[None, :, None, None] + beta[None, :, None, None]
        return self._io(xhat, "output")


class _IntegerBatchNorm(torch.autograd.Function):
    """y = xhat * gamma + beta in forward (xhat already computed); in backward, the contract's
    integer BatchNorm backward (`engine.batchnorm_backward`) for dx, and the exact sums for
    d_gamma and d_beta, from the error at y. ``x_on_grid``: x as (integers, frac)."""

    @staticmethod
    def forward(ctx, x, mean_q, std_q, xhat, gamma, beta, mean_frac, std_frac, gamma_frac, x_on_grid):
        ctx.save_for_backward(x, mean_q, std_q, xhat, gamma)
        ctx.fracs = (mean_frac, std_frac, gamma_frac)
        ctx.x_on_grid = x_on_grid
        return xhat * gamma[None, :, None, None] + beta[None, :, None, None]

    @staticmethod
    def backward(ctx, e):
        from ..engine.ops.batchnorm import batchnorm2d_backward
        from ..fixedpoint.format import FixedArray
        x, mean_q, std_q, xhat, gamma = ctx.saved_tensors
        mean_frac, std_frac, gamma_frac = ctx.fracs
        d_gamma = (e * xhat).sum((0, 2, 3))
        d_beta = e.sum((0, 2, 3))
        e_on_grid, xhat_on_grid = grid_integers(e), grid_integers(xhat)
        if e_on_grid is None or xhat_on_grid is None:  # an error off every grid (no error
            # quantizers upstream): the same formula in float64, without the final rounding
            g = e * gamma[None, :, None, None]
            d = x - mean_q[None, :, None, None]
            s = std_q[None, :, None, None]
            mean_g = g.mean((0, 2, 3), keepdim=True)
            mean_gd = (g * d / s).mean((0, 2, 3), keepdim=True)
            dx = (g - mean_g - d / s * mean_gd) / s
        else:
            def ints(t, f):  # per-channel registers, on their known grids
                return np.round(t.detach().double().cpu().numpy() * 2.0 ** f).astype(np.int64)
            dx = batchnorm2d_backward(FixedArray(*ctx.x_on_grid), FixedArray(*e_on_grid),
                                      FixedArray(ints(mean_q, mean_frac), mean_frac),
                                      FixedArray(ints(std_q, std_frac), std_frac),
                                      FixedArray(*xhat_on_grid),
                                      FixedArray(ints(gamma, gamma_frac), gamma_frac))[0]
            dx = torch.from_numpy(dx.to_float()).to(e)
        return dx, None, None, None, d_gamma, d_beta, None, None, None, None
