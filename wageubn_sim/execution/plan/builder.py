"""Building the execution plan: each node becomes steps by its op's rule (`RULES`), every value
a slot in the per-image arena, and the arena's dtype the narrowest the static ranges prove
exact (see the package's docstring)."""
from __future__ import annotations

import numpy as np

from ...engine.mac import FLOAT32_EXACT, FLOAT64_EXACT
from ...engine.mac.phases import mac_taps, stride_phase_geometry
from ...engine.mac.weights import weight_summary
from ...engine.ops.conv2d import accumulator_grid, multiply_bound
from ...engine.ops.pool import MAX_WINDOW_CELLS, window_cells
from ...engine.ops.thresholds import clamped_to_range, prepared_rows
from ...engine.ranges import input_register_range
from ...engine.registers import align
from ...engine.registry import OPS
from ...fixedpoint.format import MAX_BITS, Format
from ...fixedpoint.modes import OVERFLOW_WRAP, Overflow, Rounding
from ...fixedpoint.scalar import DOMAIN_LIMIT
from ..ranges import value_ranges
from .layout import (ACTIVATION, ADD, COLUMN, FIELDS, MAC, MAX_POOL, OP, PLAN_MAX_ARENA,
                     PLAN_MAX_MACS, R_FIELDS, R_FLOAT, R_OVERFLOW, R_SHIFT, REGISTER, THRESHOLDS)
from .runtime import Plan


class NotPlannable(ValueError):
    """The graph runs layer by layer (the message says why)."""


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
        if not OPS[node.op].planned:
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

    def _register_row(self, node, register, fmt, frac_in, rounding, overflow) -> int:
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

    def _row(self, op, **fields) -> None:
        """A step of kind ``op`` with its fields by column name (`layout.COLUMNS`)."""
        row = np.full(FIELDS, -1, np.int64)
        row[OP] = op
        for key, value in fields.items():
            row[COLUMN[key]] = value
        self.steps.append(row)

    def _range_magnitude(self, name) -> int:
        lo, hi = self.ranges[name]
        return max(-lo, hi)

    # nodes
    def add(self, node) -> None:
        """The steps of ``node``, by its op's rule (`RULES`)."""
        RULES[node.op](self, node, [self.slots[i] for i in node.inputs])
        self._bound(self._range_magnitude(node.name))

    def _requantize(self, node, ins):
        src, shape, frac = ins[0]
        p = node.params
        dst = self._slot(node.name, node.out_shape, node.out_fmt.frac_bits)
        reg = self._register_row(node, "output", p.out_fmt, frac, p.rounding, p.overflow)
        self._row(REGISTER, SRC=src, DST=dst, C=int(np.prod(shape)), REG_OUT=reg)

    def _flatten(self, node, ins):
        src, shape, frac = ins[0]  # the arena holds C, H, W in order already
        self.slots[node.name] = (src, tuple(node.out_shape), frac)
        self.node_registers[node.name] = ["output"]

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
        reg = self._register_row(node, "input", p.input_register, frac, p.rounding, Overflow.SAT_SYM)
        tmp = self._space(int(np.prod(shape)))
        self._row(REGISTER, SRC=src, DST=tmp, C=int(np.prod(shape)), REG_OUT=reg)
        return tmp, p.input_register.frac_bits, magnitude

    def _mac(self, node, ins):
        p = node.params
        src, shape, frac = ins[0]
        weight, bias = node.arrays["weight"], node.arrays.get("bias")
        if node.op == "linear":
            shape, weight = (shape[0], 1, 1), weight[:, :, None, None]
        elif len(shape) == 2:  # a 1-D convolution: one row of height 1
            shape = (shape[0], 1, shape[1])
        src, fx, x_max = self._input_register(node, src, shape, frac)
        o, cg, kh, kw = weight.shape
        fw = p.weight_fmt.frac_bits
        acc_frac, prod_shift = accumulator_grid(fx, p.weight_fmt, p.bias_fmt if bias is not None else None)
        w = align(weight, fw, acc_frac - fx)  # products land on the accumulator's grid
        b = align(bias, p.bias_fmt.frac_bits, acc_frac) if bias is not None else np.zeros(o, np.int64)
        summary = weight_summary(weight.reshape(o, -1))
        bound = multiply_bound(summary, int(np.abs(b).max(initial=0)), x_max, prod_shift)
        acc = p.accumulator
        if acc.bits is not None and acc.overflow != Overflow.WRAP and bound > (1 << (acc.bits - 1)) - 1:
            raise NotPlannable(f"node {node.name}: its {acc.bits}-bit saturating accumulator may "
                               "saturate MAC by MAC; that order runs layer by layer")
        self._bound(bound, summary["abs_max"] << prod_shift)  # the sums, and the weights themselves
        oh, ow = (1, 1) if node.op == "linear" else (1, *node.out_shape[1:]) if len(node.out_shape) == 2 \
            else node.out_shape[1:]
        if node.op == "linear":  # a dot product per output (`_mac`), over the weights as they are
            taps, weights, planes, sums, rows, pitch, f32 = -1, w, -1, -1, -1, -1, False
        else:
            # the input as stride phase planes (`mac.phases.stride_phase_planes`' layout, per image),
            # the sums at their pitch, each output's nonzero taps (a zero weight adds nothing):
            # where its run starts in the planes (`mac.phases.mac_taps`, channel-major, the weights'
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
        reg_acc = self._register_row(node, "accumulator", Format(acc.bits, acc_frac) if acc.bits else None,
                                 acc_frac, Rounding.FLOOR, acc.overflow)
        reg_out = self._register_row(node, "output", p.out_fmt, acc_frac, p.rounding, p.out_overflow)
        self._row(MAC, SRC=src, DST=dst, C=shape[0], H=shape[1], W=shape[2], O=o, OH=oh, OW=ow,
                  KH=kh, KW=kw, SH=p.stride[0], SW=p.stride[1], PH=p.padding[0], PW=p.padding[1],
                  GROUPS=p.groups, WOFF=self._append(table, weights), BOFF=self._append(table, b), TAPS=taps,
                  REG_ACC=reg_acc, REG_OUT=reg_out, PLANES=planes, SUMS=sums, ROWS=rows, PITCH=pitch,
                  F32=int(f32))
        self.macs += o * cg * kh * kw * oh * ow

    def _activation(self, node, ins):
        p = node.params
        src, shape, frac = ins[0]
        src, frac, _ = self._input_register(node, src, shape, frac)
        shift, ceiling = 0, -1
        if p.ceiling is not None:
            shift = max(frac, 0) - frac
            frac, ceiling = frac + shift, p.ceiling << (frac + shift)
            self._bound(ceiling)
        dst = self._slot(node.name, node.out_shape, node.out_fmt.frac_bits)
        reg_out = self._register_row(node, "output", p.out_fmt, frac, p.rounding, p.overflow)
        self._row(ACTIVATION, SRC=src, DST=dst, C=int(np.prod(shape)), SHIFT_A=shift,
                  CEILING=ceiling, REG_OUT=reg_out)

    def _max_pool(self, node, ins):
        src, shape, frac = ins[0]
        c, h, w = shape
        _, oh, ow = node.out_shape
        if node.params.kernel[0] * node.params.kernel[1] * oh * ow > MAX_WINDOW_CELLS:  # before the table
            raise NotPlannable(f"node {node.name}: {node.params.kernel[0] * node.params.kernel[1] * oh * ow} "
                               f"window cells exceed {MAX_WINDOW_CELLS}; large windows run layer by layer")
        try:  # each window's cells, kernel cell by kernel cell (`ops.pool.window_cells`)
            cells = window_cells(h, w, node.params, oh, ow)
        except ValueError as err:
            raise NotPlannable(f"node {node.name}: {err}") from None
        dst = self._slot(node.name, node.out_shape, frac)
        self._row(MAX_POOL, SRC=src, DST=dst, C=c, H=h, W=w, OH=oh, OW=ow, KH=node.params.kernel[0],
                  KW=node.params.kernel[1], TAPS=self._index(cells))
        self.node_registers[node.name] = ["output"]

    def _add(self, node, ins):
        p = node.params
        (a, shape, fa), (b, shape_b, fb) = ins
        if shape != shape_b:
            raise NotPlannable(f"node {node.name}: operand shapes {shape} and {shape_b} differ")
        frac = max(fa, fb)
        for name, f in zip(node.inputs, (fa, fb)):
            self._bound(self._range_magnitude(name) << (frac - f))
        dst = self._slot(node.name, node.out_shape, node.out_fmt.frac_bits)
        reg_out = self._register_row(node, "output", p.out_fmt, frac, p.rounding, p.overflow)
        self._row(ADD, SRC=a, SRC2=b, DST=dst, C=int(np.prod(shape)), SHIFT_A=frac - fa,
                  SHIFT_B=frac - fb, REG_OUT=reg_out)

    def _thresholds(self, node, ins):
        src, shape, frac = ins[0]
        table, signs = node.arrays["thresholds"], node.arrays["signs"]
        table = clamped_to_range(table, *self.ranges[node.inputs[0]])  # within the arena's bound
        self._bound(int(np.abs(table).max(initial=0)))
        blocks, starts = prepared_rows(table)
        pixels = int(np.prod(shape[1:]))
        dst = self._slot(node.name, node.out_shape, node.out_fmt.frac_bits)
        at = self._index(blocks)
        self._row(THRESHOLDS, SRC=src, DST=dst, C=shape[0], H=pixels, KH=table.shape[0],
                  WOFF=self._index(starts + at), BOFF=self._index(signs), SHIFT_A=node.params.first,
                  SHIFT_B=node.params.step)
        self.node_registers[node.name] = ["output"]

    def finish(self) -> Plan:
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
            registers[:, R_FLOAT] = (shifts > 0) & (shifts <= MAX_BITS) & (registers[:, R_OVERFLOW] != OVERFLOW_WRAP)
        return Plan(np.array(self.steps, np.int64).reshape(-1, FIELDS), registers,
                    constants.astype(dtype), constants32.astype(np.float32), indices, self.arena,
                    self.arena32, int(np.prod(self.graph.inputs[0].shape)),
                    offset, shape, next(n.out_fmt for n in self.graph.nodes if n.name == out),
                    self.macs, self.register_names, self.node_registers, self.graph.inputs[0].fmt)


# How each op the plan takes becomes steps: one rule per op (its spec says ``planned``)
RULES = {"conv2d": _Builder._mac, "linear": _Builder._mac, "activation": _Builder._activation,
         "max_pool2d": _Builder._max_pool, "add": _Builder._add, "requantize": _Builder._requantize,
         "flatten": _Builder._flatten, "thresholds": _Builder._thresholds}
