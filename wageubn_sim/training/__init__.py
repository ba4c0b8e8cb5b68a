"""Bit-exact integer training: the update unit (U) and the training step (BatchNorm-free
networks so far). The torch twin of U is `wageubn_sim.function.optim.WageubnSGD`."""
from .step import IntegerTrainer, cross_entropy_error
from .update import ORDERS, UpdateParams, momentum_update

__all__ = ["ORDERS", "IntegerTrainer", "UpdateParams", "cross_entropy_error", "momentum_update"]
