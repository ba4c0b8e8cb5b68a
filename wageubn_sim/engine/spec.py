"""An op's facts in one place: its spec, declared in its own file under `engine/ops/`.

Everything above the engine reads an op through its spec instead of a table or an if-chain of
its own: graph validation (arity, params, arrays), the graph file and manifest codecs (the
params struct), execution (``run``), the static ranges (``static_range``), the execution plan
(``planned``), the audit and the sweep (the output register, the accumulator), integer training
(``backward``), the QONNX exporter and importer (their rule and handler tables are keyed by the
same op names). Adding an op is a file in `engine/ops/` that defines ``SPECS``; the registry
(`engine.registry`) finds it.

A spec's callables take the params struct, the node's integer arrays ({role: int64 array}) and
the inputs, never a graph node: the engine knows nothing of graphs.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from ..fixedpoint.format import Format
from ..fixedpoint.modes import Overflow, Rounding


@dataclasses.dataclass(frozen=True)
class Register:
    """A register: its format and how a value is moved into it (docs/arithmetic.md section 9).
    The one type for every input and output register; a params struct keeps its fields under
    the names its spec's ``output_fields`` gives (so that graph files stay as they are)."""

    fmt: Format
    rounding: Rounding = Rounding.HALF_EVEN
    overflow: Overflow = Overflow.SAT


def _no_arrays(params) -> dict:
    return {}


def _no_check(params) -> None:
    return None


def _no_inner_registers(params, out) -> list:
    return []


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """What the rest of the house needs of one op.

    ``run(params, arrays, ins, trace) -> Output``: the forward kernel; ``ins`` is a list of
    (int64 array, frac) of the node's inputs. ``arity``: inputs the op reads (None: one or
    more). ``arrays(params) -> {role: Format}``: exactly the integer arrays a node holds (an
    optional one, such as a bias, present exactly when its format is declared), each of rank
    ``array_ranks[role]``. ``check(params)``: what the params struct cannot check alone (a
    field another op's struct would leave empty). ``output_fields``: the names of the output
    register's (format, rounding, overflow) in the params, or None (no output register);
    ``input_register``: the params have iostrict's input register (``input_register``, rounded
    by ``rounding``, SAT_SYM). ``mac``: a MAC layer's kind ("multiply" or "adder"), with an
    accumulator register (``params.accumulator``); None for other ops. ``inner_registers(params,
    out)``: the registers between the input and the output of a traced run, in datapath order,
    as [(name, integers, Format)] (a MAC layer's accumulator; BatchNorm's xhat).
    ``static_range(params, arrays, ins) -> (lo, hi, frac)``: bounds of the value before the
    output register for every input in the ranges ``ins`` [((lo, hi), frac)], exact Python
    integers (`engine.ranges`). ``planned``: the execution plan computes it. ``trainable``: the
    array roles integer training updates; ``backward``: see `training.step` (None: training
    refuses the op); ``error_quantizer``: the WAGEUBN quantizer applied to the error arriving
    at the op's output in training ("E1", "E2" or None), ``grad_quantizer`` the one applied to
    its parameters' gradients ("G" or "G_BN"); ``train_forward(params, arrays, ins,
    settings) -> (Output, statistics)``: the forward in training mode where it differs from
    ``run`` (BatchNorm's batch statistics; ``settings``: the trainer's for the layer).
    """

    name: str
    params: type
    run: Callable
    static_range: Callable
    arity: int | None = 1
    arrays: Callable = _no_arrays
    array_ranks: dict = dataclasses.field(default_factory=dict)
    check: Callable = _no_check
    output_fields: tuple | None = None
    input_register: bool = False
    mac: str | None = None
    inner_registers: Callable = _no_inner_registers
    planned: bool = False
    trainable: tuple = ()
    backward: Callable | None = None
    error_quantizer: str | None = None
    grad_quantizer: str | None = None
    train_forward: Callable | None = None

    @property
    def accumulator(self) -> bool:
        """Whether the op has an accumulator register (a MAC layer)."""
        return self.mac is not None

    def traced_registers(self, params, out) -> list:
        """[(name, integers, Format)] of every register of a traced run, in datapath order: the
        input register (iostrict), the inner ones, the output register (a MAC layer without
        one outputs its accumulator, listed already)."""
        registers = []
        register = self.input_register_of(params)
        if register is not None:
            registers.append(("input", out.trace["input"], register.fmt))
        registers += self.inner_registers(params, out)
        if not (self.accumulator and self.output_register(params) is None):
            registers.append(("output", out.q, out.fmt))
        return registers

    def output_register(self, params) -> Register | None:
        """The output register the params declare; None where the op has none or leaves its
        output unrounded (an unbounded grid taken as it comes)."""
        if self.output_fields is None:
            return None
        fmt, rounding, overflow = (getattr(params, f) for f in self.output_fields)
        return None if fmt is None else Register(fmt, rounding, overflow)

    def with_output_register(self, params, register: Register):
        """The params with ``register`` as their output register."""
        if self.output_fields is None:
            raise ValueError(f"op {self.name} has no output register")
        fmt, rounding, overflow = self.output_fields
        return dataclasses.replace(params, **{fmt: register.fmt, rounding: register.rounding,
                                              overflow: register.overflow})

    def input_register_of(self, params) -> Register | None:
        """iostrict's input register (SAT_SYM, the layer's rounding), if the params hold one."""
        if not self.input_register or params.input_register is None:
            return None
        return Register(params.input_register, params.rounding, Overflow.SAT_SYM)
