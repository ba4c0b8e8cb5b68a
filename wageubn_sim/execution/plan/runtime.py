"""The execution plan at run time: `Plan`, its tables, and the compiled call that runs them
image by image (`_run_chunk`), each step through the engine's own loops: the registers'
(`fixedpoint.loops`), the activation's, the add's and the max pool's (their op files); a conv's
stride-phase planes and taps are `engine.mac`'s, summed here in the arena (`_conv`).
"""
from __future__ import annotations

import dataclasses

import numba
import numpy as np
from numba import njit, prange

from ...engine.mac.phases import fill_stride_phases
from ...engine.ops.activation import relu_into
from ...engine.ops.add import add_into
from ...engine.ops.pool import max_over_cells
from ...engine.ops.thresholds import levels_into
from ...engine.registers import Events
from ...fixedpoint.floats import FLOAT_EXACT_BITS, quantize_float_scalar
from ...fixedpoint.format import Format
from ...fixedpoint.loops import requantize_in_place
from ...fixedpoint.modes import OVERFLOW_WRAP, ROUND_HALF_EVEN
from .layout import (ACTIVATION, ADD, BOFF, C, DST, F32, H, KH, KW, MAC, MAX_POOL, O, OH, OP,
                     OW, PARALLEL_MIN_MACS, PH, PITCH, PLANES, PW, R_FLOAT, R_OVERFLOW, R_ROUNDING,
                     R_SHIFT, R_BITS, R_SIGNED, REG_ACC, REG_OUT, ROWS, SATURATIONS, SH, SHIFT_A,
                     SHIFT_B, CEILING, SRC, SRC2, SUMS, SW, TAPS, THRESHOLDS, TIES, UNDERFLOWS, W, WOFF,
                     WRAPS, GROUPS)


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
        are float64 integers (`fixedpoint.floats.FLOAT_EXACT_BITS`)."""
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


# ---- running -----------------------------------------------------------------------------------

@njit(cache=True)
def _apply_register(buf, start, size, registers, reg, counts):
    """The register ``reg`` applied to buf[start:start + size] in place
    (`fixedpoint.loops.requantize_in_place`), its events added to counts[reg]. In place only:
    through one view the vectorized loops need no overlap check (two views of the same cells
    fail it, and the loop runs scalar)."""
    row = registers[reg]
    ties, overflowed, underflows = requantize_in_place(
        buf[start:start + size], row[R_SHIFT], row[R_BITS], row[R_SIGNED], row[R_ROUNDING],
        row[R_OVERFLOW], row[R_FLOAT])
    counts[reg, WRAPS if row[R_OVERFLOW] == OVERFLOW_WRAP else SATURATIONS] += overflowed
    counts[reg, TIES] += ties
    counts[reg, UNDERFLOWS] += underflows


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
def _mac_step(buf, work, s, constants, constants32, indices, registers, counts):
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
    itself, or the float32 arena). The input is laid out as `mac.phases.stride_phase_planes` does
    (`mac.phases.fill_stride_phases`, channel by channel), so that each tap (`mac.phases.mac_taps`) reads one
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
def _max_pool_step(buf, s, indices):
    """Max pooling of one image, channel by channel through the op's own loop
    (`ops.pool.max_over_cells`) over the window-cell table the builder made."""
    c_in, h, w, windows = s[C], s[H], s[W], s[OH] * s[OW]
    table = indices[s[TAPS]:s[TAPS] + s[KH] * s[KW] * windows]
    for c in range(c_in):
        max_over_cells(buf[s[SRC] + c * h * w:s[SRC] + (c + 1) * h * w], table,
                       buf[s[DST] + c * windows:s[DST] + (c + 1) * windows])


@njit(cache=True)
def _step(buf, work, s, constants, constants32, indices, registers, counts):
    op = s[OP]
    if op == MAC:  # an input register is a REGISTER step before it, into the slot it reads
        _mac_step(buf, work, s, constants, constants32, indices, registers, counts)
    elif op == MAX_POOL:
        _max_pool_step(buf, s, indices)
    elif op == ACTIVATION:  # the ops' own loops (`ops.activation.relu_into`, `ops.add.add_into`)
        src, dst, size = s[SRC], s[DST], s[C]
        relu_into(buf[src:src + size], buf[dst:dst + size], 1 << s[SHIFT_A], s[CEILING])
        if s[REG_OUT] >= 0:
            _apply_register(buf, dst, size, registers, s[REG_OUT], counts)
    elif op == ADD:
        a, b, dst, size = s[SRC], s[SRC2], s[DST], s[C]
        add_into(buf[a:a + size], buf[b:b + size], buf[dst:dst + size], 1 << s[SHIFT_A], 1 << s[SHIFT_B])
        if s[REG_OUT] >= 0:
            _apply_register(buf, dst, size, registers, s[REG_OUT], counts)
    elif op == THRESHOLDS:  # the op's own loop (`ops.thresholds.levels_into`), channel by channel
        pixels = s[H]
        for c in range(s[C]):
            row = 0 if s[KH] == 1 else c
            src, dst = s[SRC] + c * pixels, s[DST] + c * pixels
            levels_into(buf[src:src + pixels], indices[indices[s[WOFF] + row]:], indices[s[BOFF] + row],
                        s[SHIFT_A], s[SHIFT_B], buf[dst:dst + pixels])
    else:  # REGISTER
        src, dst, size = s[SRC], s[DST], s[C]
        buf[dst:dst + size] = buf[src:src + size]
        _apply_register(buf, dst, size, registers, s[REG_OUT], counts)


@njit(cache=True)
def _run_chunk(k, x, quantizing, scale, lo, hi, check_tiny, out, program, counts):
    """Chunk k of the batch (images k*per.. of counts.shape[0] chunks), image by image through
    every step of ``program`` (`Plan.program`) in its own arenas; its events go to counts[k].
    With ``quantizing``, x holds floats, each put on the input grid as `fixedpoint.floats.quantize`
    does in half-to-even saturating mode (`quantize_float_scalar`: exact, the rails being
    float64 integers); returns how many it could not decide (not finite, or, with
    ``check_tiny``, scaled below the normal range), after which the outputs are void."""
    steps, registers, constants, constants32, indices, arena, arena32, output_offset = program
    n, size = x.shape
    per = (n + counts.shape[0] - 1) // counts.shape[0]
    buf = np.zeros(arena, dtype=constants.dtype)
    work = np.zeros(arena32, dtype=np.float32)
    undecided = 0
    for b in range(k * per, min(n, (k + 1) * per)):
        if quantizing:
            for i in range(size):  # the fused float quantizer's element, half to even, saturating
                n, refused = quantize_float_scalar(x[b, i], scale, check_tiny, ROUND_HALF_EVEN,
                                                   np.uint32(0), lo, hi, False, 1.0)
                undecided += refused
                buf[i] = n
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
