"""The op table of the integer graph: each op's params struct and how a node runs."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..engine.activation import ActivationParams, activation
from ..engine.add import AddParams, add
from ..engine.adder2d import adder2d
from ..engine.batchnorm import BatchNormParams, batchnorm2d
from ..engine.conv2d import Conv2dParams, conv2d, linear
from ..engine.conv2d_bn import Conv2dBatchNormParams, conv2d_bn
from ..engine.pool import PoolParams, avg_pool2d, max_pool2d
from ..engine.registers import Accumulator, Events, Output
from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow, Rounding


@dataclasses.dataclass(frozen=True)
class FlattenParams:
    start_dim: int = 1


def _flatten(x, frac, p, trace):
    q = x.reshape(x.shape[0], -1)
    return Output(q, Format(None, frac), Events(), {"output": q} if trace else {},
                  np.zeros(q.shape, np.uint8))


def _weights(node):
    return node.arrays["weight"], node.arrays.get("bias")


OPS = {
    "conv2d": (Conv2dParams, lambda n, ins, t: conv2d(ins[0][0], ins[0][1], *_weights(n), n.params, t)),
    "linear": (Conv2dParams, lambda n, ins, t: linear(ins[0][0], ins[0][1], *_weights(n), n.params, t)),
    "adder2d": (Conv2dParams, lambda n, ins, t: adder2d(ins[0][0], ins[0][1], *_weights(n), n.params, t)),
    "conv2d_bn": (Conv2dBatchNormParams, lambda n, ins, t: conv2d_bn(
        ins[0][0], ins[0][1], *_weights(n), n.arrays["multiplier"], n.arrays["offset"], n.params, t)),
    "batchnorm2d": (BatchNormParams, lambda n, ins, t: batchnorm2d(
        ins[0][0], ins[0][1], n.arrays["mean"], n.arrays["std"], n.arrays.get("gamma"),
        n.arrays.get("beta"), n.params, t)),
    "activation": (ActivationParams, lambda n, ins, t: activation(ins[0][0], ins[0][1], n.params, t)),
    "max_pool2d": (PoolParams, lambda n, ins, t: max_pool2d(ins[0][0], ins[0][1], n.params, t)),
    "avg_pool2d": (PoolParams, lambda n, ins, t: avg_pool2d(ins[0][0], ins[0][1], n.params, t)),
    "add": (AddParams, lambda n, ins, t: add(ins[0][0], ins[0][1], ins[1][0], ins[1][1], n.params, t)),
    "flatten": (FlattenParams, lambda n, ins, t: _flatten(ins[0][0], ins[0][1], n.params, t)),
}


# ---- params <-> JSON ------------------------------------------------------------------------

def encode(value):
    if isinstance(value, Format):
        return {"format": value.to_dict()}
    if isinstance(value, Accumulator):
        return {"accumulator": value.to_dict()}
    if isinstance(value, Rounding):
        return {"rounding": value.name}
    if isinstance(value, Overflow):
        return {"overflow": value.name}
    if isinstance(value, (tuple, list)):
        return [encode(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise TypeError(f"cannot encode {type(value).__name__} in a graph file")


def decode(value):
    if isinstance(value, dict):
        (kind, body), = value.items()
        return {"format": Format.from_dict, "accumulator": Accumulator.from_dict,
                "rounding": lambda b: Rounding[b], "overflow": lambda b: Overflow[b]}[kind](body)
    if isinstance(value, list):
        return tuple(decode(v) for v in value)
    return value


def params_to_json(params) -> dict:
    return {f.name: encode(getattr(params, f.name)) for f in dataclasses.fields(params)}


def params_from_json(op: str, data: dict):
    if op not in OPS:
        raise ValueError(f"unknown op {op!r} (a graph from a newer version?)")
    cls = OPS[op][0]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"op {op}: unknown parameters {sorted(unknown)} (graph from a newer version?)")
    return cls(**{k: decode(v) for k, v in data.items()})
