"""Bit-exact integer training, so far: the update unit (U). The torch twin is
`wageubn_sim.function.optim.WageubnSGD`."""
from .update import ORDERS, UpdateParams, momentum_update

__all__ = ["ORDERS", "UpdateParams", "momentum_update"]
