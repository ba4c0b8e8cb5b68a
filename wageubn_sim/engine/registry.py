"""The ops the engine has, by name: every module of `engine/ops` that defines ``SPECS`` (a
tuple of `spec.OpSpec`). An op added as a file there is found here; nothing else lists ops."""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import InternalError
from . import ops as _ops_package
from .spec import OpSpec


def _collect() -> dict:
    specs = {}
    for info in sorted(pkgutil.iter_modules(_ops_package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{_ops_package.__name__}.{info.name}")
        for spec in getattr(module, "SPECS", ()):
            if spec.name in specs:
                raise InternalError(f"op {spec.name} is declared twice ({module.__name__})")
            specs[spec.name] = spec
    return specs


OPS: dict[str, OpSpec] = _collect()


def spec_of(op: str) -> OpSpec:
    """The spec of ``op``; ValueError naming the known ops for an unknown one (a graph file or
    manifest from a newer version)."""
    try:
        return OPS[op]
    except (KeyError, TypeError):
        raise ValueError(f"unknown op {op!r} (a graph from a newer version?); known: {sorted(OPS)}") from None
