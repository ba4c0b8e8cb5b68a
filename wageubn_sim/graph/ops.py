"""The op table of the integer graph: each op's params struct and how a node runs."""
from __future__ import annotations

import dataclasses
import types
import typing

import numpy as np

from ..engine.activation import ActivationParams, activation
from ..engine.add import AddParams, add
from ..engine.adder2d import adder2d
from ..engine.batchnorm import BatchNormParams, batchnorm2d
from ..engine.concat import ConcatParams, concat
from ..engine.conv2d import Conv2dParams, conv2d, linear
from ..engine.conv2d_bn import Conv2dBatchNormParams, conv2d_bn
from ..engine.pool import PoolParams, avg_pool2d, max_pool2d
from ..engine.registers import Accumulator, Events, Output
from ..engine.requantize import RequantizeParams, requantize_op
from ..engine.upsample import UpsampleParams, upsample
from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow, Rounding


@dataclasses.dataclass(frozen=True)
class FlattenParams:
    start_dim: int = 1

    def __post_init__(self):
        if self.start_dim != 1 or isinstance(self.start_dim, bool):
            raise ValueError(f"flatten: start_dim={self.start_dim!r}; the engine flattens from 1")


def _flatten(x, frac, p, trace):
    q = x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # -1 fails on an empty batch
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
    "requantize": (RequantizeParams, lambda n, ins, t: requantize_op(ins[0][0], ins[0][1], n.params, t)),
    "concat": (ConcatParams, lambda n, ins, t: concat(ins, n.params, t)),
    "upsample": (UpsampleParams, lambda n, ins, t: upsample(ins[0][0], ins[0][1], n.params, t)),
}


ARITY = {"add": 2, "concat": None}  # inputs per node (None: one or more); every other op reads one
# Fields of PoolParams that only average pooling reads: a max pool keeps them at their defaults
_AVERAGE_ONLY = ("out_fmt", "count_include_pad", "divisor_override", "rounding", "overflow")
MAC_OPS = ("conv2d", "linear", "adder2d", "conv2d_bn")
ARRAY_RANKS = {"weight": None, "bias": 1, "mean": 1, "std": 1, "gamma": 1, "beta": 1,
               "multiplier": 1, "offset": 1}  # weight: 2 (linear) or 4


def check_structure(op: str, params, inputs: int) -> None:
    """A node's op, params struct and input count against its op, before any kernel runs: a
    graph file or manifest edited by hand fails here with the field named, never inside a
    kernel. ValueError names what is wrong."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; known: {sorted(OPS)}")
    if not isinstance(params, OPS[op][0]):
        raise ValueError(f"params must be a {OPS[op][0].__name__}")
    arity = ARITY.get(op, 1)
    if (inputs != arity) if arity is not None else inputs < 1:
        raise ValueError(f"reads {inputs} inputs, its op takes {arity if arity is not None else 'one or more'}")
    if op == "avg_pool2d" and params.out_fmt is None:
        raise ValueError("an average pool needs out_fmt, the grid of its rounded mean")
    if op == "max_pool2d":
        defaults = PoolParams(params.kernel, params.stride)
        averaging = [f for f in _AVERAGE_ONLY if getattr(params, f) != getattr(defaults, f)]
        if averaging:
            raise ValueError(f"a max pool sets {averaging}, which only average pooling reads")


def array_formats(op: str, params) -> dict:
    """{role: Format} of the arrays a node holds: exactly these must be present (an optional
    array, such as a bias, is present exactly when its format is declared)."""
    p = params
    if op in MAC_OPS:
        out = {"weight": p.weight_fmt}
        if p.bias_fmt is not None:
            out["bias"] = p.bias_fmt
        if op == "conv2d_bn":  # a folded BatchNorm's registers (engine/conv2d_bn.py)
            out["multiplier"] = Format(None, p.multiplier_frac)
            out["offset"] = Format(None, p.multiplier_frac + p.accumulator_frac)
        return out
    if op == "batchnorm2d":
        out = {"mean": p.mean_fmt, "std": p.std_fmt}
        out.update({role: fmt for role, fmt in (("gamma", p.gamma_fmt), ("beta", p.beta_fmt))
                    if fmt is not None})
        return out
    return {}


def stochastic_fields(params) -> list:
    """The params fields that ask for STOCHASTIC rounding (the forward engine has no random
    words for them)."""
    return [f.name for f in dataclasses.fields(params)
            if getattr(params, f.name) is Rounding.STOCHASTIC]


# ---- params <-> JSON ------------------------------------------------------------------------
# Version 2 (graph files and bundle manifests): plain values, the type each field's annotation
# gives: a format {"bits", "frac_bits", "signed"}, an accumulator {"bits", "overflow",
# "mac_order", "k_split"}, a mode by its name ("HALF_EVEN"), a pair as a list. Version 1 tagged
# each value ({"rounding": {"rounding": "HALF_EVEN"}}); it is still read.

def _plain(value):
    if isinstance(value, (Format, Accumulator)):
        return value.to_dict()
    if isinstance(value, (Rounding, Overflow)):
        return value.name
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    raise TypeError(f"cannot write {type(value).__name__} into a graph file")


def params_to_json(params) -> dict:
    return {f.name: _plain(getattr(params, f.name)) for f in dataclasses.fields(params)}


def _from_plain(value, hint):
    """A plain JSON value as the annotated type ``hint``; ValueError if it is not one."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in typing.get_args(hint):
            return None
        hint = next(h for h in typing.get_args(hint) if h is not type(None))
    if hint in (Format, Accumulator):
        return hint.from_dict(value)
    if hint in (Rounding, Overflow):
        if not isinstance(value, str) or value not in hint.__members__:
            raise ValueError(f"{value!r} is not one of {list(hint.__members__)}")
        return hint[value]
    if hint is tuple:
        if not isinstance(value, list):
            raise ValueError(f"{value!r} is not a list")
        return tuple(value)
    return value


def _decode_tagged(value):
    """Version 1's tagged form."""
    decoders = {"format": Format.from_dict, "accumulator": Accumulator.from_dict,
                "rounding": lambda b: Rounding[b], "overflow": lambda b: Overflow[b]}
    if isinstance(value, dict):
        if len(value) != 1 or next(iter(value)) not in decoders:
            raise ValueError(f"{value!r} is not a tagged value (one of {sorted(decoders)})")
        (kind, body), = value.items()
        try:
            return decoders[kind](body)
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{kind} {body!r} is malformed ({err!r})") from None
    if isinstance(value, list):
        return tuple(_decode_tagged(v) for v in value)
    return value


def _has_type(value, hint) -> bool:
    """Whether a decoded value is of a params field's annotated type (bool is no int)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def params_from_json(op: str, data: dict, version: int = 2):
    """The op's params struct from a graph file or manifest (``version`` 2: plain values; 1:
    tagged): every field present (a missing one is an error, not a default), each of its
    annotated type; the struct checks the values."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r} (a graph from a newer version?); known: {sorted(OPS)}")
    if not isinstance(data, dict):
        raise ValueError(f"op {op}: params must be an object, got {type(data).__name__}")
    cls = OPS[op][0]
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"op {op}: unknown parameters {unknown} (graph from a newer version?)")
    missing = [n for n in names if n not in data]
    if missing:
        raise ValueError(f"op {op}: parameters {missing} are missing")
    values = {}
    for name in names:
        try:
            value = _decode_tagged(data[name]) if version == 1 else _from_plain(data[name], hints[name])
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(f"op {op}: parameter {name}: {err}") from None
        if not _has_type(value, hints[name]):
            raise ValueError(f"op {op}: parameter {name}={data[name]!r} is not of type {hints[name]}")
        values[name] = value
    return cls(**values)
