"""The execution plan's tables, as builder and runtime both read them: a step is a row of
int64 fields, a register a row of its own, the events four counts per register."""
from __future__ import annotations

PLAN_MAX_MACS = 1 << 23  # MACs per image above which the layer-by-layer GEMMs are faster
PLAN_MAX_ARENA = 1 << 21  # values per image in the arena (16 MiB per thread in int64)
PARALLEL_MIN_MACS = 1 << 20  # a call below this many MACs runs on one thread: waking a pool costs more

# the columns of the step table, one field each (-1: unused by the step's op)
COLUMNS = ("OP", "SRC", "SRC2", "DST", "C", "H", "W", "O", "OH", "OW", "KH", "KW", "SH", "SW",
           "PH", "PW", "DH", "DW", "GROUPS", "WOFF", "BOFF", "TAPS", "REG_ACC", "REG_OUT",
           "SHIFT_A", "SHIFT_B", "CEILING", "PLANES", "SUMS", "ROWS", "PITCH", "F32")
COLUMN = {name: i for i, name in enumerate(COLUMNS)}
(OP, SRC, SRC2, DST, C, H, W, O, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, GROUPS, WOFF, BOFF,
 TAPS, REG_ACC, REG_OUT, SHIFT_A, SHIFT_B, CEILING, PLANES, SUMS, ROWS, PITCH, F32) = range(len(COLUMNS))
FIELDS = len(COLUMNS)
# the step kinds
MAC, MAX_POOL, ACTIVATION, ADD, REGISTER, THRESHOLDS = range(6)
# a register row: shift (frac_in - frac_out), bits (0: unbounded), signed, rounding, overflow,
# and whether its values are exact float integers it may round in float64 (set once the arena
# dtype is known)
R_SHIFT, R_BITS, R_SIGNED, R_ROUNDING, R_OVERFLOW, R_FLOAT, R_FIELDS = range(7)
# the event counts of a register, in `Events`' order
WRAPS, SATURATIONS, TIES, UNDERFLOWS = range(4)
