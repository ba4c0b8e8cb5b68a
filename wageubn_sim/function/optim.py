"""WageubnSGD: the WAGEUBN update (U) as a torch optimizer, equal to the integer update.

It computes `scheme.update.momentum_update` in float64 on the same grids (every value is a
dyadic of at most 53 significant bits, so float64 is exact), so its weights and momenta equal
the integer unit's bit for bit. Gradients are expected on their grids already (the torch
path's gwquant/gbnquant put them there). ``lr`` is quantized with flr (k=10).
"""
from __future__ import annotations

import torch

from ..fixedpoint.modes import Overflow
from ..scheme.update import UpdateParams
from .number import lrquant, quantize_values


def _store(v, fmt):
    return quantize_values(v, fmt, overflow=Overflow.SAT_SYM)


class WageubnSGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float, update: UpdateParams = UpdateParams(), lr_k: int = 10):
        super().__init__(params, {"lr": lrquant(lr, lr_k)})
        self.update = update

    @torch.no_grad()
    def snap_to_grid(self):
        """Put the parameters on the master-weight grid Q(w, k_w) (once, before training)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.copy_(_store(p.double(), self.update.weight_fmt))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        u = self.update
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p, dtype=torch.float64)
                a = state["momentum"] * 2.0 ** -u.momentum_shift + p.grad.double()
                if u.order == "quantize_before":
                    a = _store(a, u.acc_fmt)
                p.copy_(_store(p.double() - group["lr"] * a, u.weight_fmt))
                state["momentum"] = a if u.order == "quantize_before" else _store(a, u.acc_fmt)
        return loss
