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

import numpy as np
import torch
import torch.nn as nn

from ..fixedpoint.core import quantize
from ..fixedpoint.format import Format
from ._layer import QuantModule, pick_widths
from .number import directquant

BATCHNORM_WIDTHS = {"weight": (8, 16), "bias": (8, 16), "mean": (16, 24), "var": (16, 24),
                    "xhat": (8, 16), "input": (12, 24), "output": (8, 16)}

_TINY_VARIANCE = 2.0 ** -80
_MAX_GRID_FRAC = 60


def _grid_frac(x: torch.Tensor) -> int | None:
    """The coarsest grid 2**-f (0 <= f <= 60) holding every value of x exactly, with the
    integers below 2**53; None if there is none."""
    v = x.detach().double().cpu().numpy()
    if v.size == 0 or not np.all(np.isfinite(v)):
        return None
    for f in range(_MAX_GRID_FRAC + 1):
        scaled = v * 2.0 ** f
        if np.abs(scaled).max() >= 2.0 ** 53:
            return None
        if np.array_equal(scaled, np.round(scaled)):
            return f
    return None  # keeps d sqrt(var) finite at var = 0; sqrt is 2**-40, below any grid


class BatchNorm2d(QuantModule, nn.BatchNorm2d):
    """nn.BatchNorm2d with the official UBN forward. ``var_*_bit_width`` sizes the std."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True,
                 iostrict=False, seed=0, **widths):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias)
        self._init_quant(pick_widths(BATCHNORM_WIDTHS, widths, "BatchNorm2d"), iostrict, seed)

    def quantized_eps(self) -> float:
        k = self.var_dec_bit_width
        lsbs = max(int(quantize(np.float64(self.eps), Format(None, k - 1))), 1)
        return lsbs * 2.0 ** -(k - 1)

    def statistics_registers(self, mean, var):
        """(mean_q, std_q): the mean and the std (eps_q included) as held in their registers."""
        mean_q = self._register(mean, "mean")
        std_q = self._register(torch.sqrt(var.clamp_min(_TINY_VARIANCE)), "var") + self.quantized_eps()
        return mean_q, std_q

    def _exact_batch_registers(self, x, mean_q, std_q):
        """In training, the contract's exact batch statistics (integer sums, one rounding each,
        `engine.batchnorm.batch_statistics`) replace the float ones' values wherever the input
        lies on a dyadic grid, as it does between WAGEUBN layers; gradients stay those of the
        float statistics (straight-through, as in the official code)."""
        frac = _grid_frac(x)
        if frac is None:
            return mean_q, std_q
        from ..engine.batchnorm import batch_statistics
        q = np.round(x.detach().double().cpu().numpy() * 2.0 ** frac).astype(np.int64)
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
        if self.training or self.running_mean is None:
            mean_q, std_q = self._exact_batch_registers(x, mean_q, std_q)
        xhat = (x - mean_q[None, :, None, None]) / std_q[None, :, None, None]
        xhat = self._register(xhat, "xhat") if self.iostrict else directquant(xhat, self.xhat_dec_bit_width)
        if self.affine:
            gamma = self._register(self._bn_gradient(self.weight), "weight")
            xhat = xhat * gamma[None, :, None, None]
            if self.bias is not None:
                beta = self._register(self._bn_gradient(self.bias), "bias")
                xhat = xhat + beta[None, :, None, None]
        return self._io(xhat, "output")
