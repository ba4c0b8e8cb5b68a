"""Bit-exact integer training: the training step over a compiled graph, each op's backward
from its spec (`engine.spec`), the parameters through G / G_BN and the update unit U
(`scheme.update`, whose torch twin is `wageubn_sim.function.optim.WageubnSGD`)."""
from ..scheme.update import ORDERS, UpdateParams, momentum_update
from .step import IntegerTrainer, cross_entropy_error

__all__ = ["ORDERS", "IntegerTrainer", "UpdateParams", "cross_entropy_error", "momentum_update"]
