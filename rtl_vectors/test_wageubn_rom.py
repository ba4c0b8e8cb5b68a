"""cocotb test: wageubn_rom.v, initialised by $readmemh from a bundle's .mem file, holds at every
address the word that the tensor's .npy gives (WAGEUBN_BUNDLE=<folder>, WAGEUBN_TENSOR=<id>).
The .npy is read alone (its sha256 checked), so that a .mem that differs from it fails here, in
the simulation, and not before."""
import hashlib
import os
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from wageubn_sim.files.read import parse_npy, read_json
from wageubn_sim.vectors.formats import pack_words


@cocotb.test()
async def rom_holds_the_tensor(dut):
    root = Path(os.environ["WAGEUBN_BUNDLE"])
    manifest = read_json(root / "manifest.json", "manifest")
    entry = manifest["tensors"][os.environ["WAGEUBN_TENSOR"]]
    npy = next(f for f in entry["files"] if f["kind"] == "npy")
    data = (root / npy["path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == npy["sha256"], f"{npy['path']}: sha256 differs"
    words = pack_words(parse_npy(data, npy["path"]), entry["width"], entry["lanes"], entry["signed"])
    words += [manifest["options"]["fill"]] * (entry["memory_depth"] - len(words))
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    mismatches = []
    for address, want in enumerate(words):
        dut.addr.value = address
        await RisingEdge(dut.clk)
        await ReadOnly()
        got = int(dut.data.value)
        if got != want:
            mismatches.append(f"address {address}: {got:#x} != {want:#x}")
        await RisingEdge(dut.clk)
    dut._log.info("%d words checked, %d mismatches", len(words), len(mismatches))
    assert not mismatches, "; ".join(mismatches[:5])
