"""cocotb testbench: drives wageubn_mac_layer.v with a vector bundle, read through its manifest,
and checks every output of every layer the datapath implements, bit for bit.

Layers checked: conv2d and linear (the accumulator, MAC by MAC in channel-major order, and the
output register where the layer has one) and ReLU activations (bias path, shift, round half
to even, ReLU). The bundle comes from the environment: WAGEUBN_BUNDLE=<folder>. The simulator
is cocotb's choice (tests/test_rtl.py runs it on Icarus and on Verilator).
"""
import os
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from wageubn_sim.graph.params import params_from_json
from wageubn_sim.vectors.verify import load_bundle


def _frac(tensors, tid):
    return tensors[tid]["format"]["frac_bits"]


def _mac_jobs(p, layer, tensors, values):
    """(bias, [(x, w)...], expected acc, expected out or None, cfg) per output element."""
    roles = layer["tensors"]
    if p.input_register is not None:
        return None  # the datapath has no input register stage
    x = values[roles["inputs"][0]]
    w = values[roles["weight"]]
    acc_q = values[roles["accumulator"]]
    out_q = values[roles["output"]] if p.out_fmt is not None else None
    if layer["op"] == "linear":
        x, w = x[:, :, None, None], w[:, :, None, None]
        acc_q = acc_q[:, :, None, None]
        out_q = None if out_q is None else out_q[:, :, None, None]
    fx = _frac(tensors, roles["inputs"][0])
    fw = p.weight_fmt.frac_bits
    frac = fx + fw
    bias = np.zeros(w.shape[0], np.int64)
    bias_shift = 0
    if "bias" in roles:
        fb = p.bias_fmt.frac_bits
        frac = max(frac, fb)
        bias, bias_shift = values[roles["bias"]], frac - fb
    out_shift = 0 if out_q is None else frac - p.out_fmt.frac_bits
    cfg = dict(bias_shift=bias_shift, prod_shift=frac - fx - fw, out_shift=out_shift,
               acc_sat=p.accumulator.overflow.name == "SAT", relu=0)
    (sh, sw), (ph, pw), (dh, dw), groups = p.stride, p.padding, p.dilation, p.groups
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    for b in range(n):
        for oc in range(o):
            c0 = (oc // og) * cg
            for oy in range(acc_q.shape[2]):
                for ox in range(acc_q.shape[3]):
                    pairs = []
                    for ci in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                yi, xi = oy * sh + i * dh - ph, ox * sw + j * dw - pw
                                inside = 0 <= yi < h and 0 <= xi < wd
                                pairs.append((int(x[b, c0 + ci, yi, xi]) if inside else 0,
                                              int(w[oc, ci, i, j])))
                    yield (int(bias[oc]), pairs, int(acc_q[b, oc, oy, ox]),
                           None if out_q is None else int(out_q[b, oc, oy, ox]), cfg)


def _relu_jobs(p, layer, tensors, values):
    roles = layer["tensors"]
    if p.ceiling is not None or p.input_register is not None or p.out_fmt is None:
        return None
    x = values[roles["inputs"][0]].reshape(-1)
    y = values[roles["output"]].reshape(-1)
    shift = _frac(tensors, roles["inputs"][0]) - p.out_fmt.frac_bits
    if shift < 0:
        return None
    cfg = dict(bias_shift=0, prod_shift=0, out_shift=shift, acc_sat=0, relu=1)
    return ((int(a), [], int(a), int(b), cfg) for a, b in zip(x, y))


@cocotb.test()
async def bundle_outputs_match(dut):
    root = Path(os.environ["WAGEUBN_BUNDLE"])
    manifest, values = load_bundle(root)
    tensors = manifest["tensors"]
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.start.value, dut.valid.value = 0, 0
    await RisingEdge(dut.clk)
    checked, mismatches = 0, []
    for layer in manifest["layers"]:
        p = params_from_json(layer["op"], layer["params"], manifest["version"])
        if layer["op"] in ("conv2d", "linear"):
            jobs = _mac_jobs(p, layer, tensors, values)
        elif layer["op"] == "activation":
            jobs = _relu_jobs(p, layer, tensors, values)
        else:
            jobs = None
        if jobs is None:
            continue
        count = 0
        for bias, pairs, want_acc, want_out, cfg in jobs:
            dut.cfg_bias_shift.value = cfg["bias_shift"]
            dut.cfg_prod_shift.value = cfg["prod_shift"]
            dut.cfg_out_shift.value = cfg["out_shift"]
            dut.cfg_acc_sat.value = int(cfg["acc_sat"])
            dut.cfg_relu.value = cfg["relu"]
            dut.bias.value = bias
            dut.start.value = 1
            await RisingEdge(dut.clk)
            dut.start.value = 0
            dut.valid.value = 1
            for xv, wv in pairs:
                dut.x.value = xv
                dut.w.value = wv
                await RisingEdge(dut.clk)
            dut.valid.value = 0
            await ReadOnly()
            got_acc = dut.acc.value.to_signed()
            got_out = dut.out.value.to_signed()
            await RisingEdge(dut.clk)
            if got_acc != want_acc:
                mismatches.append(f"{layer['name']} element {count}: acc {got_acc} != {want_acc}")
            if want_out is not None and got_out != want_out:
                mismatches.append(f"{layer['name']} element {count}: out {got_out} != {want_out}")
            count += 1
        checked += count
        dut._log.info("%s (%s): %d outputs checked", layer["name"], layer["op"], count)
    dut._log.info("%d outputs checked, %d mismatches", checked, len(mismatches))
    assert checked > 0, "the bundle has no layer this datapath implements"
    assert not mismatches, "; ".join(mismatches[:5])
