"""The multiply-accumulate core shared by Conv2d, Linear and Adder2d.

Two ways to the same sums:

* `exact_matmul`: when the accumulator cannot overflow (exact, or WRAP, which is the exact sum
  mod 2**bits in any order, or SAT with a bound that never reaches the rails), any exact
  method will do: an int8 GEMM on base-256 digits of both operands (int32 sums, exact in
  chunks of 131071 MACs), or BLAS in float32/float64 on chunks of the reduction small enough
  that *every* partial sum is an integer the float type holds exactly, whatever order the
  library adds in. Parts are added in int64, so results do not depend on the library, its
  blocking or the thread count.
* `narrow_mac_loop`: a saturating accumulator that can reach its rails depends on the MAC
  order, so the loop nest runs in hardware order, one MAC at a time per output element,
  with the accumulator's rule applied after every addition.

Modules, one concern each: `windows` (a layer's input unrolled into window rows), `weights`
(what is derived once from read-only weights), `digits` (base-256 digits for the int8 GEMM),
`gemm` (`exact_matmul`: the int8 GEMM and the float chunks), `narrow` (the hardware-order MAC
loop), `phases` (stride-phase planes and taps, shared with the execution plan).
"""

FLOAT32_EXACT = 1 << 24
FLOAT64_EXACT = 1 << 53

OP_MULTIPLY = 0  # acc += x * w
OP_ADDER = 1  # acc += -|x - w| (AdderNet)

# Float arithmetic on integers below 2**24 (float32) or 2**53 (float64) is exact, so LLVM may
# reorder and fuse it freely (what lets it vectorise the event counts); NaN/Inf never occur.
EXACT_FAST = {"reassoc", "contract", "nnan", "ninf", "nsz"}
