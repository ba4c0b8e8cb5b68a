"""The execution plan: a whole small graph run image by image in one compiled call.

Why: on a small network the layer-by-layer path (`Graph.run(plan=False)`) spends its time in
Python between kernels, tens of microseconds per layer per call, and holds every layer's
output for the whole batch (a batch of 4096 outgrows the caches). The plan is built once per
graph: each node becomes a row of integers (`Step`), every value a slot in a per-image arena,
and `_run_plan` runs the rows over one image after another, so the arena stays in cache
whatever the batch. Threads take contiguous chunks of the batch; each image's arithmetic is
the same whoever runs it, and the event counts are integer sums per chunk, so the thread
count and the chunking never change a byte.

Exactness: the plan is built only when the graph's static ranges (`graph.ranges`) bound every
value and every partial sum of every layer for every input the input format admits. The arena
dtype is the narrowest that holds them exactly: float32 below 2**24, float64 below 2**53, else
int64 (below 2**61, the domain); a conv whose inputs, weights and partial sums stay below 2**24
works in float32 (its planes and sums in a float32 arena of their own) whatever the arena.
Floats hold integers there, and every partial sum of a MAC is bounded by
|b| + sum |w| * max|x| in any order, so float adds are exact (as in `mac.py`). Each
register moves values through `requantize_scalar_flagged`, the engine's scalar primitive, in
int64, or, a right shift without wrap in a float arena, by the float path's rules
(`round_float_scalar`, docs §4), exact on those integers. Float input is quantized in the plan
by the input register's rule (half to even, saturating), exact while its rails are float64
integers; the rest goes to `InputSpec.quantize`.

What it covers: conv2d and linear (any accumulator that the static bound shows cannot
saturate; WRAP by its definition, the exact sum mod 2**bits), ReLU/ReLU6, max pooling,
residual add, requantize and flatten, with input registers (iostrict). Anything else, or a
graph too large to gain (`PLAN_MAX_MACS`), runs layer by layer: `build_plan` says why.
"""
from __future__ import annotations

import dataclasses

import numba
import numpy as np
from numba import njit, prange

from ..fixedpoint.core import (FLOAT_EXACT_BITS, OVERFLOWED, TIE, fit_overflow, format_range,
                               low_mask, requantize_scalar_flagged, round_float_scalar,
                               scaled_float, shift_right_rounded_tie)
from ..fixedpoint.format import MAX_BITS, Format
from ..graph.ranges import input_register_range, value_ranges
from ..fixedpoint.modes import Overflow, Rounding
from .conv2d import multiply_bound
from .mac import (FLOAT32_EXACT, fill_stride_phases, mac_taps, stride_phase_geometry,
                  weight_summary)
from .registers import Events, align

PLANNED_OPS = ("conv2d", "linear", "activation", "max_pool2d", "add", "requantize", "flatten")
PLAN_MAX_MACS = 1 << 23  # MACs per image above which the layer-by-layer GEMMs are faster
PLAN_MAX_ARENA = 1 << 21  # values per image in the arena (16 MiB per thread in int64)
PLAN_MAX_CELLS = 1 << 22  # a max pool's window cells (its table: 32 MiB)
PARALLEL_MIN_MACS = 1 << 20  # a call below this many MACs runs on one thread: waking a pool costs more
FLOAT64_EXACT = 1 << 53

# the rows of the step table: one field per column
(OP, SRC, SRC2, DST, C, H, W, O, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, GROUPS, WOFF, BOFF,
 TAPS, REG_ACC, REG_OUT, SHIFT_A, SHIFT_B, CEILING, PLANES, SUMS, ROWS, PITCH, F32,
 FIELDS) = range(33)
# the ops
MAC, MAX_POOL, ACTIVATION, ADD, REGISTER = range(5)
# a register row: shift (frac_in - frac_out), bits (0: unbounded), signed, rounding, overflow,
# and whether it may run in float64 (`_register`; set once the arena dtype is known)
R_SHIFT, R_BITS, R_SIGNED, R_ROUNDING, R_OVERFLOW, R_FLOAT, R_FIELDS = range(7)
# the event counts of a register, in `Events`' order
WRAPS, SATURATIONS, TIES, UNDERFLOWS = range(4)
_WRAP = int(Overflow.WRAP)
_HALF_EVEN, _HALF_UP, _HALF_AWAY, _FLOOR, _TOWARD_ZERO = (
    int(r) for r in (Rounding.HALF_EVEN, Rounding.HALF_UP, Rounding.HALF_AWAY, Rounding.FLOOR,
                     Rounding.TOWARD_ZERO))


class NotPlannable(ValueError):
    """The graph runs layer by layer (the message says why)."""


@dataclasses.dataclass
class Plan:
    steps: np.ndarray  # (steps, FIELDS) int64
    registers: np.ndarray  # (registers, R_FIELDS) int64
    constants: np.ndarray  # weights and aligned biases, in the arena dtype
    constants32: np.ndarray  # those of the convs that work in float32 (`F32`)
    indices: np.ndarray  # int64: each conv's taps, each max pool's window cells
    arena: int  # values per image
    arena32: int  # float32 values per image: the planes and sums of the convs that work in float32
    input_size: int
    output_offset: int
    output_shape: tuple
    output_fmt: Format
    macs: int  # per image
    register_names: list  # [(node, register)] per register row
    node_registers: dict  # {node: [register, ...]} as the layer-by-layer path reports them
    input_fmt: Format  # float inputs are quantized into it (half to even, saturating)

    def __post_init__(self):
        # what each call needs, worked out once (a call of one image is ~12 us of arithmetic;
        # these took as long again): the output's size, and each reported register's row of
        # event counts (-1: none, its events are zero)
        self.output_size = int(np.prod(self.output_shape, dtype=np.int64))
        rows = {key: i for i, key in enumerate(self.register_names)}
        self.event_rows = [(name, reg, rows.get((name, reg), -1))
                           for name, regs in self.node_registers.items() for reg in regs]

    @property
    def dtype(self):
        return self.constants.dtype

    @property
    def program(self) -> tuple:
        """What `_run_chunk` runs: the tables and the arenas' sizes."""
        return (self.steps, self.registers, self.constants, self.constants32, self.indices,
                self.arena, self.arena32, self.output_offset)

    @property
    def quantizes_floats(self) -> bool:
        """Whether `run_floats` can quantize float inputs itself: the input format's rails
        are float64 integers (`fixedpoint.core.FLOAT_EXACT_BITS`)."""
        return self.input_fmt.bits <= FLOAT_EXACT_BITS[self.input_fmt.signed]

    def run(self, q: np.ndarray, threads: int | None = None) -> tuple:
        """(output integers (N, *shape) int64, {node: {register: Events}}) of the quantized input
        q (N, ...) int64. ``threads``: at most this many (default: Numba's current count; one
        below `PARALLEL_MIN_MACS`)."""
        x = np.ascontiguousarray(q.reshape(q.shape[0], self.input_size)).astype(self.dtype, copy=False)
        return self._run(x, threads, None)

    def run_floats(self, x: np.ndarray, threads: int | None = None) -> tuple | None:
        """`run` of float input x (float32 or float64), quantized inside the plan as
        `InputSpec.quantize` does (half to even, saturating; `quantizes_floats` must hold);
        None when a value is not finite or scales below float64's normal range, for the
        caller's quantizer to decide (it refuses them)."""
        fmt = self.input_fmt
        lo, hi = float(fmt.min_int), float(fmt.max_int)
        flat = np.ascontiguousarray(x.reshape(x.shape[0], self.input_size))
        return self._run(flat, threads, (2.0 ** fmt.frac_bits, lo, hi, fmt.frac_bits < 0))

    def _run(self, x, threads, quantize) -> tuple | None:
        n = x.shape[0]
        available = numba.get_num_threads()
        if threads is None:
            threads = available if n * self.macs >= PARALLEL_MIN_MACS else 1
        chunks = max(1, min(threads, available, n))
        out = np.empty((n, self.output_size), self.dtype)
        counts = np.zeros((chunks, len(self.registers), 4), np.int64)
        scale, lo, hi, check_tiny = quantize or (1.0, -np.inf, np.inf, False)
        args = (x, quantize is not None, scale, lo, hi, check_tiny, out, self.program, counts)
        if n:
            if chunks == 1:  # no pool to wake
                undecided = _run_serial(*args)
            else:
                numba.set_num_threads(chunks)
                try:
                    undecided = _run_parallel(*args)
                finally:
                    numba.set_num_threads(available)
            if undecided:
                return None
        totals = counts.sum(axis=0).tolist()
        events = {name: {} for name in self.node_registers}
        for name, reg, row in self.event_rows:
            events[name][reg] = Events(*totals[row]) if row >= 0 else Events()
        return out.astype(np.int64).reshape((n,) + self.output_shape), events


# ---- building ----------------------------------------------------------------------------------

def build_plan(graph) -> Plan:
    """The plan of ``graph`` (checked: `Graph.check` has recorded shapes and formats), or
    NotPlannable with the reason."""
    spec = graph.inputs[0]
    if not spec.fmt.bounded:
        raise NotPlannable("the input format is unbounded: no static range bounds the values")
    if len(graph.outputs) != 1:
        raise NotPlannable("the plan computes one output")
    macs = 0  # decided before the static ranges, which take a while on a large network
    for node in graph.nodes:
        if node.op not in PLANNED_OPS:
            raise NotPlannable(f"node {node.name}: op {node.op} runs layer by layer")
        if node.op in ("conv2d", "linear"):
            macs += node.arrays["weight"].size * int(np.prod(node.out_shape[1:]))
    if macs > PLAN_MAX_MACS:
        raise NotPlannable(f"{macs} MACs per image: the layer-by-layer GEMMs are faster")
    ranges = value_ranges(graph)
    builder = _Builder(graph, ranges)
    for node in graph.nodes:
        builder.add(node)
    return builder.finish()


class _Builder:
    def __init__(self, graph, ranges):
        self.graph, self.ranges = graph, ranges
        spec = graph.inputs[0]
        size = int(np.prod(spec.shape))
        self.slots = {spec.name: (0, tuple(spec.shape), spec.fmt.frac_bits)}  # name -> offset, shape, frac
        self.arena, self.arena32, self.constants32 = size, 0, []
        self.magnitude = max(-spec.fmt.min_int, spec.fmt.max_int)  # the largest |value| met
        self.steps, self.registers, self.register_names = [], [], []
        self.node_registers, self.constants, self.indices, self.macs = {}, [], [], 0

    # slots and constants
    def _slot(self, name, shape, frac) -> int:
        """The slot of the value ``name``, the output of a node."""
        offset = self._space(int(np.prod(shape)))
        self.slots[name] = (offset, tuple(shape), frac)
        return offset

    def _space(self, size, f32=False) -> int:
        """Room for ``size`` values per image: in the arena, or with ``f32`` in the float32
        arena. A node's own spaces (input register, planes, sums) are not slots: no value name
        can reach them."""
        offset = self.arena32 if f32 else self.arena
        if f32:
            self.arena32 += size
        else:
            self.arena += size
        if self.arena + self.arena32 > PLAN_MAX_ARENA:
            raise NotPlannable(f"the values of one image exceed {PLAN_MAX_ARENA} integers")
        return offset

    @staticmethod
    def _append(table, values) -> int:
        """Append ``values`` (integers) to ``table``; returns where they start."""
        offset = sum(len(c) for c in table)
        table.append(np.asarray(values, dtype=np.int64).ravel())
        return offset

    def _index(self, values) -> int:
        return self._append(self.indices, values)

    def _bound(self, *magnitudes) -> None:
        self.magnitude = max(self.magnitude, *(int(m) for m in magnitudes))

    def _register(self, node, register, fmt, frac_in, rounding, overflow) -> int:
        """A register row moving values at 2**-frac_in into ``fmt``; -1 for none."""
        self.node_registers.setdefault(node.name, [])
        if register not in self.node_registers[node.name]:
            self.node_registers[node.name].append(register)
        if fmt is None:
            return -1
        self.registers.append([frac_in - fmt.frac_bits, 0 if fmt.bits is None else fmt.bits,
                               int(fmt.signed), int(Rounding(rounding)), int(Overflow(overflow)), 0])
        self.register_names.append((node.name, register))
        return len(self.registers) - 1

    def _row(self, op, node, **fields) -> None:
        row = np.full(FIELDS, -1, np.int64)
        row[OP] = op
        for key, value in fields.items():
            row[globals()[key]] = value
        self.steps.append(row)

    def _range_magnitude(self, name) -> int:
        lo, hi = self.ranges[name]
        return max(-lo, hi)

    # nodes
    def add(self, node) -> None:
        ins = [self.slots[i] for i in node.inputs]
        kind = node.op
        if kind in ("conv2d", "linear"):
            self._mac(node, ins[0])
        elif kind == "activation":
            self._activation(node, ins[0])
        elif kind == "max_pool2d":
            self._max_pool(node, ins[0])
        elif kind == "add":
            self._add(node, ins)
        elif kind == "requantize":
            src, shape, frac = ins[0]
            p = node.params
            dst = self._slot(node.name, node.out_shape, node.out_fmt.frac_bits)
            reg = self._register(node, "output", p.out_fmt, frac, p.rounding, p.overflow)
            self._row(REGISTER, node, SRC=src, DST=dst, C=int(np.prod(shape)), REG_OUT=reg)
        else:  # flatten: the arena holds C, H, W in order already
            src, shape, frac = ins[0]
            self.slots[node.name] = (src, tuple(node.out_shape), frac)
            self.node_registers[node.name] = ["output"]
        self._bound(self._range_magnitude(node.name))

    def _input_register(self, node, src, shape, frac):
        """A REGISTER step for the layer's input register (iostrict) into a slot of its own;
        returns (the slot the layer reads, its frac, the largest |value| there)."""
        p = node.params
        (lo, hi), _ = input_register_range(self.ranges[node.inputs[0]], frac, p.input_register,
                                           p.rounding)
        magnitude = max(-lo, hi, 0)
        self._bound(magnitude)
        if p.input_register is None:
            return src, frac, magnitude
        reg = self._register(node, "input", p.input_register, frac, p.rounding, Overflow.SAT_SYM)
        tmp = self._space(int(np.prod(shape)))
        self._row(REGISTER, node, SRC=src, DST=tmp, C=int(np.prod(shape)), REG_OUT=reg)
        return tmp, p.input_register.frac_bits, magnitude

    def _mac(self, node, slot):
        p = node.params
        src, shape, frac = slot
        weight, bias = node.arrays["weight"], node.arrays.get("bias")
        if node.op == "linear":
            shape, weight = (shape[0], 1, 1), weight[:, :, None, None]
        src, fx, x_max = self._input_register(node, src, shape, frac)
        o, cg, kh, kw = weight.shape
        fw = p.weight_fmt.frac_bits
        acc_frac = max(fx + fw, p.bias_fmt.frac_bits if bias is not None else fx + fw)
        prod_shift = acc_frac - fx - fw
        w = align(weight, fw, acc_frac - fx)  # products land on the accumulator's grid
        b = align(bias, p.bias_fmt.frac_bits, acc_frac) if bias is not None else np.zeros(o, np.int64)
        summary = weight_summary(weight.reshape(o, -1))
        bound = multiply_bound(summary, int(np.abs(b).max(initial=0)), x_max, prod_shift)
        acc = p.accumulator
        if acc.bits is not None and acc.overflow != Overflow.WRAP and bound > (1 << (acc.bits - 1)) - 1:
            raise NotPlannable(f"node {node.name}: its {acc.bits}-bit saturating accumulator may "
                               "saturate MAC by MAC; that order runs layer by layer")
        self._bound(bound, summary["abs_max"] << prod_shift)  # the sums, and the weights themselves
        oh, ow = node.out_shape[1:] if node.op == "conv2d" else (1, 1)
        if node.op == "linear":  # a dot product per output (`_mac`), over the weights as they are
            taps, weights, planes, sums, rows, pitch, f32 = -1, w, -1, -1, -1, -1, False
        else:
            # the input as stride phase planes (`mac.stride_phase_planes`' layout, per image),
            # the sums at their pitch, each output's nonzero taps (a zero weight adds nothing):
            # where its run starts in the planes (`mac.mac_taps`, channel-major, the weights'
            # order), prefixed by where each output's taps start, and their weights. Every tap
            # is one contiguous run (`_mac`). In float32 (twice the SIMD width) when every value
            # there, inputs, weights and partial sums, is below 2**24, whatever the arena
            f32 = max(bound, x_max, summary["abs_max"] << prod_shift) < FLOAT32_EXACT
            rows, pitch = stride_phase_geometry(shape[1], shape[2], p.padding, p.stride)
            phases = p.stride[0] * p.stride[1]
            plane = (rows + 1) * pitch
            planes = self._space(shape[0] * phases * plane, f32)
            sums = self._space(o * oh * pitch, f32)
            _, tap_plane, tap_offset = mac_taps(cg, kh, kw, *p.stride, *p.dilation, pitch, False)
            flat = w.reshape(o, -1)
            starts, runs, nonzero_weights = [0], [], []
            for out in range(o):
                nonzero = np.flatnonzero(flat[out])
                group = out // (o // p.groups)
                runs.append((group * cg * phases + tap_plane[nonzero]) * plane + tap_offset[nonzero])
                nonzero_weights.append(flat[out, nonzero])
                starts.append(starts[-1] + len(nonzero))
            taps = self._index(np.concatenate([starts, *runs]))
            weights = np.concatenate(nonzero_weights)
        table = self.constants32 if f32 else self.constants
        dst = self._slot(node.name, node.out_shape, node.out_fmt.frac_bits)
        reg_acc = self._register(node, "accumulator", Format(acc.bits, acc_frac) if acc.bits else None,
                                 acc_frac, Rounding.FLOOR, acc.overflow)
        reg_out = self._register(node, "output", p.out_fmt, acc_frac, p.rounding, p.out_overflow)
        self._row(MAC, node, SRC=src, DST=dst, C=shape[0], H=shape[1], W=shape[2], O=o, OH=oh, OW=ow,
                  KH=kh, KW=kw, SH=p.stride[0], SW=p.stride[1], PH=p.padding[0], PW=p.padding[1],
                  GROUPS=p.groups, WOFF=self._append(table, weights), BOFF=self._append(table, b), TAPS=taps,
                  REG_ACC=reg_acc, REG_OUT=reg_out, PLANES=planes, SUMS=sums, ROWS=rows, PITCH=pitch,
                  F32=int(f32))
        self.macs += o * cg * kh * kw * oh * ow

    def _activation(self, node, slot):
        p = node.params
        src, shape, frac = slot
        src, frac, _ = self._input_register(node, src, shape, frac)
        shift, ceiling = 0, -1
        if p.ceiling is not None:
            shift = max(frac, 0) - frac
            frac, ceiling = frac + shift, p.ceiling << (frac + shift)
            self._bound(ceiling)
        dst = self._slot(node.name, node.out_shape, node.out_fmt.frac_bits)
        reg_out = self._register(node, "output", p.out_fmt, frac, p.rounding, p.overflow)
        self._row(ACTIVATION, node, SRC=src, DST=dst, C=int(np.prod(shape)), SHIFT_A=shift,
                  CEILING=ceiling, REG_OUT=reg_out)

    def _max_pool(self, node, slot):
        p = node.params
        src, shape, frac = slot
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
        c, h, w = shape
        _, oh, ow = node.out_shape
        if kh * kw * oh * ow > PLAN_MAX_CELLS:  # checked before the table is built
            raise NotPlannable(f"node {node.name}: {kh * kw * oh * ow} window cells exceed "
                               f"{PLAN_MAX_CELLS}; large windows run layer by layer")
        # each window's cells as offsets in its channel, kernel cell by kernel cell (`_max_pool`):
        # a row or column of the window in the padding is replaced by the window's first one
        # inside, so that every cell read is inside the window, and a repeated cell leaves the
        # maximum as it is
        inside = []
        for size, k, s, pad, d, out in ((h, kh, sh, ph, dh, oh), (w, kw, sw, pw, dw, ow)):
            at = np.arange(out)[:, None] * s + np.arange(k)[None, :] * d - pad  # (out, k)
            valid = (at >= 0) & (at < size)
            if not valid.any(axis=1).all():
                raise NotPlannable(f"node {node.name}: a window lies wholly in the padding")
            first = at[np.arange(out), valid.argmax(axis=1)]
            inside.append(np.where(valid, at, first[:, None]))
        rows, cols = inside  # (oh, kh), (ow, kw)
        cells = rows.T[:, None, :, None] * w + cols.T[None, :, None, :]  # (kh, kw, oh, ow)
        dst = self._slot(node.name, node.out_shape, frac)
        self._row(MAX_POOL, node, SRC=src, DST=dst, C=c, H=h, W=w, OH=oh, OW=ow, KH=kh, KW=kw,
                  TAPS=self._index(cells))
        self.node_registers[node.name] = ["output"]

    def _add(self, node, slots):
        p = node.params
        (a, shape, fa), (b, shape_b, fb) = slots
        if shape != shape_b:
            raise NotPlannable(f"node {node.name}: operand shapes {shape} and {shape_b} differ")
        frac = max(fa, fb)
        for name, f in zip(node.inputs, (fa, fb)):
            self._bound(self._range_magnitude(name) << (frac - f))
        dst = self._slot(node.name, node.out_shape, node.out_fmt.frac_bits)
        reg_out = self._register(node, "output", p.out_fmt, frac, p.rounding, p.overflow)
        self._row(ADD, node, SRC=a, SRC2=b, DST=dst, C=int(np.prod(shape)), SHIFT_A=frac - fa,
                  SHIFT_B=frac - fb, REG_OUT=reg_out)

    def finish(self) -> Plan:
        from ..fixedpoint.core import DOMAIN_LIMIT
        if self.magnitude >= DOMAIN_LIMIT:
            raise NotPlannable("a static bound leaves the 62-bit domain")
        dtype = (np.float32 if self.magnitude < FLOAT32_EXACT else
                 np.float64 if self.magnitude < FLOAT64_EXACT else np.int64)
        out = self.graph.outputs[0]
        offset, shape, _ = self.slots[out]
        table = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)
        constants, constants32, indices = (table(t) for t in (self.constants, self.constants32, self.indices))
        registers = np.array(self.registers, np.int64).reshape(-1, R_FIELDS)
        if dtype != np.int64:  # the arena's integers are exact floats: see `_register`
            shifts = registers[:, R_SHIFT]
            registers[:, R_FLOAT] = (shifts > 0) & (shifts <= MAX_BITS) & (registers[:, R_OVERFLOW] != _WRAP)
        return Plan(np.array(self.steps, np.int64).reshape(-1, FIELDS), registers,
                    constants.astype(dtype), constants32.astype(np.float32), indices, self.arena,
                    self.arena32, int(np.prod(self.graph.inputs[0].shape)),
                    offset, shape, next(n.out_fmt for n in self.graph.nodes if n.name == out),
                    self.macs, self.register_names, self.node_registers, self.graph.inputs[0].fmt)


# ---- running -----------------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _float_register(values, shift, lo, hi, rounding):
    """values (exact float integers, in place) shifted right by ``shift``, rounded and clamped
    to [lo, hi] by the float path's rules (`fixedpoint.core`, docs §4), exact here: v * 2**-shift
    is exact (a power of two, and |v| >= 1 keeps it normal), so are its rounding, its fractional
    part (a tie is one half exactly) and the clamp to the rails. Returns the (ties, overflowed,
    underflows) counts."""
    scale = 2.0 ** -shift
    ties, overflowed, underflows = 0, 0, 0
    for i in range(values.shape[0]):
        v = np.float64(values[i])
        y = v * scale
        rounded = round_float_scalar(y, rounding, np.uint32(0))
        r = min(max(rounded, lo), hi)
        values[i] = r
        over = r != rounded
        ties += (y - np.floor(y)) == 0.5
        overflowed += over
        underflows += (r == 0) & (v != 0) & (not over)
    return ties, overflowed, underflows


@njit(cache=True)
def _apply_register(buf, start, size, registers, reg, counts):
    """The register ``reg`` applied to buf[start:start + size] in place, its events added to
    counts[reg]. In place only: through one view the vectorized loops need no overlap check
    (two views of the same cells fail it, and the loop runs scalar)."""
    ties, overflowed, underflows = _register(buf[start:start + size], registers[reg])
    counts[reg, WRAPS if registers[reg, R_OVERFLOW] == _WRAP else SATURATIONS] += overflowed
    counts[reg, TIES] += ties
    counts[reg, UNDERFLOWS] += underflows


@njit(cache=True, inline="always")
def _register(values, row):
    """values = the register ``row`` applied to values; returns its (ties, overflowed,
    underflows) counts."""
    shift, bits, signed = row[R_SHIFT], row[R_BITS], row[R_SIGNED]
    rounding, overflow = row[R_ROUNDING], row[R_OVERFLOW]
    ties, overflowed, underflows = 0, 0, 0
    if row[R_FLOAT]:
        lo, hi = -np.inf, np.inf
        if bits:
            rail_lo, rail_hi = format_range(bits, signed, overflow)
            lo, hi = np.float64(rail_lo), np.float64(rail_hi)
        # one loop per rounding mode, the mode a constant in each, so that its test leaves the
        # loop and the loop vectorizes (a 4x difference)
        if rounding == _HALF_EVEN:
            ties, overflowed, underflows = _float_register(values, shift, lo, hi, _HALF_EVEN)
        elif rounding == _HALF_UP:
            ties, overflowed, underflows = _float_register(values, shift, lo, hi, _HALF_UP)
        elif rounding == _HALF_AWAY:
            ties, overflowed, underflows = _float_register(values, shift, lo, hi, _HALF_AWAY)
        elif rounding == _FLOOR:
            ties, overflowed, underflows = _float_register(values, shift, lo, hi, _FLOOR)
        else:  # TOWARD_ZERO (graphs hold no STOCHASTIC: `Graph.check`)
            ties, overflowed, underflows = _float_register(values, shift, lo, hi, _TOWARD_ZERO)
    elif 0 < shift <= MAX_BITS:  # the common case, branch-free (plans hold no STOCHASTIC)
        mask, half = low_mask(shift), np.int64(1) << (shift - 1)
        for i in range(values.shape[0]):
            v = np.int64(values[i])
            rounded, tie = shift_right_rounded_tie(v, shift, mask, half, rounding)
            r = fit_overflow(rounded, bits, signed, overflow)
            values[i] = r
            over = r != rounded
            ties += tie
            overflowed += over
            underflows += (r == 0) & (v != 0) & (not over)
    else:
        for i in range(values.shape[0]):
            v = np.int64(values[i])
            r, flag = requantize_scalar_flagged(v, shift, bits, signed, rounding, overflow, np.int64(0))
            values[i] = r
            over = (flag & OVERFLOWED) != 0
            ties += (flag & TIE) != 0
            overflowed += over
            underflows += (r == 0) & (v != 0) & (not over)
    return ties, overflowed, underflows


@njit(cache=True, fastmath={"reassoc"})
def _dot(bias, weights, values):
    """bias + sum weights * values, in whatever order vectorizes: exact, since every partial sum
    of a subset of the terms lies within the MAC's static bound (|b| + sum |w| * max |x|), where
    the arena's floats hold integers exactly ("reassoc" only reorders; it assumes nothing of
    NaN, infinity or signed zero)."""
    total = bias
    for c in range(values.shape[0]):
        total += weights[c] * values[c]
    return total


@njit(cache=True, inline="always")
def _add_taps(acc, planes, offsets, weights, first, end):
    """acc += weights[t] * planes[offsets[t]:][:len(acc)] for the taps t in [first, end), four
    taps a pass: one load and store of acc per four products instead of per product (the
    products and partial sums are exact in any order, as in `_dot`)."""
    run = acc.shape[0]
    t = first
    while t + 4 <= end:
        w0, w1, w2, w3 = weights[t], weights[t + 1], weights[t + 2], weights[t + 3]
        x0 = planes[offsets[t]:offsets[t] + run]
        x1 = planes[offsets[t + 1]:offsets[t + 1] + run]
        x2 = planes[offsets[t + 2]:offsets[t + 2] + run]
        x3 = planes[offsets[t + 3]:offsets[t + 3] + run]
        for q in range(run):
            acc[q] += (w0 * x0[q] + w1 * x1[q]) + (w2 * x2[q] + w3 * x3[q])
        t += 4
    while t < end:
        wt, xt = weights[t], planes[offsets[t]:offsets[t] + run]
        for q in range(run):
            acc[q] += wt * xt[q]
        t += 1


@njit(cache=True)
def _mac(buf, work, s, constants, constants32, indices, registers, counts):
    """Conv2d or Linear of one image, then its accumulator and output registers. A conv works
    in ``work`` (the float32 arena) with the float32 constants when its row says F32."""
    o_count, oh, ow, dst = s[O], s[OH], s[OW], s[DST]
    if s[TAPS] < 0:  # Linear: a dot product per output
        src, woff, boff = s[SRC], s[WOFF], s[BOFF]
        cg = s[C] // s[GROUPS]
        og = o_count // s[GROUPS]
        for o in range(o_count):
            cin0 = (o // og) * cg
            buf[dst + o] = _dot(constants[boff + o], constants[woff + o * cg:woff + (o + 1) * cg],
                                buf[src + cin0:src + cin0 + cg])
    elif s[F32]:
        _conv(buf, work, s, constants32, indices)
    else:
        _conv(buf, buf, s, constants, indices)
    size = o_count * oh * ow
    if s[REG_ACC] >= 0:
        _apply_register(buf, dst, size, registers, s[REG_ACC], counts)
    if s[REG_OUT] >= 0:
        _apply_register(buf, dst, size, registers, s[REG_OUT], counts)


@njit(cache=True)
def _conv(buf, work, s, constants, indices):
    """Conv2d of one image from ``buf`` into ``buf``, its planes and sums in ``work`` (``buf``
    itself, or the float32 arena). The input is laid out as `mac.stride_phase_planes` does
    (`mac.fill_stride_phases`, channel by channel), so that each tap (`mac.mac_taps`) reads one
    contiguous run of OH * PITCH values from its plane: output (y, x) sits at y * PITCH + x,
    each nonzero tap adds its weight times its run (`_add_taps`), and the columns from OW on
    are discarded. They stay inside the planes (each has a zero row more) and, as sums of as
    many products of the same operands' bounds, inside the exactness bound. The planes'
    padding is never written: it keeps the zeros of the arena's allocation."""
    c_in, h, w = s[C], s[H], s[W]
    o_count, oh, ow = s[O], s[OH], s[OW]
    src, dst, boff = s[SRC], s[DST], s[BOFF]
    sh, sw, pitch = s[SH], s[SW], s[PITCH]
    phases = sh * sw
    plane = (s[ROWS] + 1) * pitch
    planes = work[s[PLANES]:s[PLANES] + c_in * phases * plane]
    for c in range(c_in):
        fill_stride_phases(buf[src + c * h * w:src + (c + 1) * h * w].reshape(h, w), s[PH], s[PW],
                           sh, sw, pitch, planes[c * phases * plane:(c + 1) * phases * plane].reshape(phases, plane))
    starts = indices[s[TAPS]:s[TAPS] + o_count + 1]
    offsets = indices[s[TAPS] + o_count + 1:]
    weights = constants[s[WOFF]:]
    run = oh * pitch
    for o in range(o_count):
        acc = work[s[SUMS] + o * run:s[SUMS] + (o + 1) * run]  # views: runs on views vectorize
        acc[:] = constants[boff + o]
        _add_taps(acc, planes, offsets, weights, starts[o], starts[o + 1])
        for y in range(oh):  # row by row, through views: it vectorizes (4x faster)
            row, sums = buf[dst + (o * oh + y) * ow:dst + (o * oh + y + 1) * ow], acc[y * pitch:]
            for x in range(ow):
                row[x] = sums[x]


@njit(cache=True)
def _max_pool(buf, s, indices):
    """Max pooling of one image: the maximum of each window's cells (the offsets of its
    `_Builder._max_pool` table), cell by cell over all the windows of a channel (a loop of a
    window's few cells, with its bounds, costs 4x more)."""
    c_in, h, w, windows, cells = s[C], s[H], s[W], s[OH] * s[OW], s[KH] * s[KW]
    table = indices[s[TAPS]:s[TAPS] + cells * windows]
    for c in range(c_in):
        channel = buf[s[SRC] + c * h * w:s[SRC] + (c + 1) * h * w]
        out = buf[s[DST] + c * windows:s[DST] + (c + 1) * windows]
        first = table[:windows]
        for p in range(windows):
            out[p] = channel[first[p]]
        for k in range(1, cells):
            cell = table[k * windows:(k + 1) * windows]
            for p in range(windows):
                out[p] = max(out[p], channel[cell[p]])


@njit(cache=True)
def _step(buf, work, s, constants, constants32, indices, registers, counts):
    op = s[OP]
    if op == MAC:  # an input register is a REGISTER step before it, into the slot it reads
        _mac(buf, work, s, constants, constants32, indices, registers, counts)
    elif op == MAX_POOL:
        _max_pool(buf, s, indices)
    elif op == ACTIVATION:
        src, dst, size, shift, ceiling = s[SRC], s[DST], s[C], s[SHIFT_A], s[CEILING]
        values, results = buf[src:src + size], buf[dst:dst + size]
        scale = 1 << shift
        if ceiling >= 0:
            for i in range(size):
                results[i] = min(max(values[i], 0) * scale, ceiling)
        else:
            for i in range(size):
                results[i] = max(values[i], 0)
        if s[REG_OUT] >= 0:
            _apply_register(buf, dst, size, registers, s[REG_OUT], counts)
    elif op == ADD:
        a, b, dst, size = s[SRC], s[SRC2], s[DST], s[C]
        scale_a, scale_b = 1 << s[SHIFT_A], 1 << s[SHIFT_B]
        first, second, results = buf[a:a + size], buf[b:b + size], buf[dst:dst + size]
        for i in range(size):
            results[i] = first[i] * scale_a + second[i] * scale_b
        if s[REG_OUT] >= 0:
            _apply_register(buf, dst, size, registers, s[REG_OUT], counts)
    else:  # REGISTER
        src, dst, size = s[SRC], s[DST], s[C]
        buf[dst:dst + size] = buf[src:src + size]
        _apply_register(buf, dst, size, registers, s[REG_OUT], counts)


@njit(cache=True)
def _run_chunk(k, x, quantizing, scale, lo, hi, check_tiny, out, program, counts):
    """Chunk k of the batch (images k*per.. of counts.shape[0] chunks), image by image through
    every step of ``program`` (`Plan.program`) in its own arenas; its events go to counts[k].
    With ``quantizing``, x holds floats, each put on the input grid as `fixedpoint.core.quantize`
    does in half-to-even saturating mode (x * scale, rint, clamped to [lo, hi]: exact, the
    rails being float64 integers); returns how many it could not decide (not finite, or, with
    ``check_tiny``, scaled below the normal range), after which the outputs are void."""
    steps, registers, constants, constants32, indices, arena, arena32, output_offset = program
    n, size = x.shape
    per = (n + counts.shape[0] - 1) // counts.shape[0]
    buf = np.zeros(arena, dtype=constants.dtype)
    work = np.zeros(arena32, dtype=np.float32)
    undecided = 0
    for b in range(k * per, min(n, (k + 1) * per)):
        if quantizing:
            for i in range(size):
                y, refused = scaled_float(np.float64(x[b, i]), scale, check_tiny)
                undecided += refused
                buf[i] = min(max(np.rint(y), lo), hi)
            if undecided:
                return undecided
        else:
            for i in range(size):
                buf[i] = x[b, i]
        for t in range(steps.shape[0]):
            _step(buf, work, steps[t], constants, constants32, indices, registers, counts[k])
        for i in range(out.shape[1]):
            out[b, i] = buf[output_offset + i]
    return undecided


@njit(cache=True)
def _run_serial(x, quantizing, scale, lo, hi, check_tiny, out, program, counts):
    return _run_chunk(0, x, quantizing, scale, lo, hi, check_tiny, out, program, counts)


@njit(cache=True, parallel=True)
def _run_parallel(x, quantizing, scale, lo, hi, check_tiny, out, program, counts):
    undecided = 0
    for k in prange(counts.shape[0]):
        undecided += _run_chunk(k, x, quantizing, scale, lo, hi, check_tiny, out, program, counts)
    return undecided
