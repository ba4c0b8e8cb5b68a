"""A node's params as a graph file and a manifest hold them, and a node's structure checked
against its op's spec (`engine.spec`) before any kernel runs."""
from __future__ import annotations

import dataclasses
import types
import typing

from ..engine.registers import Accumulator
from ..engine.registry import spec_of
from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow, Rounding


def check_structure(op: str, params, inputs: int) -> None:
    """A node's op, params struct and input count against its op's spec, before any kernel
    runs: a graph file or manifest edited by hand fails here with the field named, never
    inside a kernel. ValueError names what is wrong."""
    spec = spec_of(op)
    if not isinstance(params, spec.params):
        raise ValueError(f"params must be a {spec.params.__name__}")
    if (inputs != spec.arity) if spec.arity is not None else inputs < 1:
        raise ValueError(f"reads {inputs} inputs, its op takes "
                         f"{spec.arity if spec.arity is not None else 'one or more'}")
    spec.check(params)


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
    cls = spec_of(op).params
    if not isinstance(data, dict):
        raise ValueError(f"op {op}: params must be an object, got {type(data).__name__}")
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
