"""cocotb testbench: drives wageubn_thresholds.v with a vector bundle, read through its
manifest, and checks every output of every thresholds layer, bit for bit: each element's
input integer against its channel's thresholds and direction (docs/arithmetic.md section 12).
The bundle comes from the environment: WAGEUBN_BUNDLE=<folder>; the module's widths are the
runner's parameters (WAGEUBN_T_BITS, WAGEUBN_LEVELS)."""
import os
from pathlib import Path

import cocotb
import numpy as np
from cocotb.triggers import Timer

from wageubn_sim.graph.params import params_from_json
from wageubn_sim.vectors.verify import load_bundle


def _packed(row, bits: int) -> int:
    """The row's thresholds in one vector, T[0] lowest, each in ``bits``-bit two's complement."""
    mask = (1 << bits) - 1
    return sum((int(t) & mask) << (i * bits) for i, t in enumerate(row))


@cocotb.test()
async def bundle_thresholds_match(dut):
    manifest, values = load_bundle(Path(os.environ["WAGEUBN_BUNDLE"]))
    t_bits = int(os.environ["WAGEUBN_T_BITS"])
    checked, mismatches = 0, []
    for layer in manifest["layers"]:
        if layer["op"] != "thresholds":
            continue
        p = params_from_json(layer["op"], layer["params"], manifest["version"])
        roles = layer["tensors"]
        x, y = values[roles["inputs"][0]], values[roles["output"]]
        table, signs = values[roles["thresholds"]], values[roles["signs"]]
        n, c = x.shape[:2]
        x, y = x.reshape(n, c, -1), y.reshape(n, c, -1)
        dut.first.value = p.first
        dut.step.value = p.step
        dut.cfg_levels.value = table.shape[1]
        for ch in range(c):
            row = 0 if table.shape[0] == 1 else ch
            dut.thresholds.value = _packed(table[row], t_bits)
            dut.negate.value = int(signs[row] < 0)
            for b in range(n):
                for i in range(x.shape[2]):
                    dut.x.value = int(x[b, ch, i])
                    await Timer(1, unit="ns")
                    got = dut.out.value.to_signed()
                    if got != int(y[b, ch, i]):
                        mismatches.append(f"{layer['name']} [{b}, {ch}, {i}]: {got} != {int(y[b, ch, i])}")
                    checked += 1
        dut._log.info("%s: %d outputs checked", layer["name"], x.size)
    dut._log.info("%d outputs checked, %d mismatches", checked, len(mismatches))
    assert checked > 0, "the bundle has no thresholds layer"
    assert not mismatches, "; ".join(mismatches[:5])
