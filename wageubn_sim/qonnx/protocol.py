"""What this tool's QONNX importer and exporter agree on: the domains and opsets they read, the
rounding names of QONNX against the engine's modes, the marks an export leaves in a node's
doc_string for the import to read back, and the metadata keys."""
from __future__ import annotations

from ..fixedpoint.modes import Rounding

QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas")
QONNX_OPSETS = (1, 2)  # the versions of QONNX's ops (Trunc's second in 2)
MIN_ONNX_OPSET = 7  # older opsets describe ops (Upsample, BatchNormalization) otherwise
ONNX_DOMAINS = ("", "ai.onnx")
# QONNX rounding_mode -> ours; CEIL, UP and HALF_DOWN have no engine mode (refused)
ROUNDING_FROM_QONNX = {"ROUND": Rounding.HALF_EVEN, "HALF_EVEN": Rounding.HALF_EVEN,
                       "HALF_UP": Rounding.HALF_AWAY, "FLOOR": Rounding.FLOOR,
                       "DOWN": Rounding.TOWARD_ZERO}
MARKER = "wageubn-sim:"  # an exporter's note in a node's doc_string (`exporter`)
UNBOUNDED = "unbounded"  # the register is unbounded; its bit width only holds its static range
INPUT_REGISTER = "input-register"  # the Quant is the next layer's input register
OWN_NODE = "requantize"  # the Quant is a requantize node of its own
RESCALE = "rescale:"  # + BITS: the Quant ends a float chain that was BITS-bit multipliers (`rescale`)
REGISTER_OPS = ("Quant", "IntQuant", "Trunc")
ACCUMULATORS_KEY = "wageubn_sim.accumulators"  # metadata: the inexact export's narrow accumulators
INEXACT_KEY = "wageubn_sim.inexact"  # metadata: what an export computes inexactly, listed
