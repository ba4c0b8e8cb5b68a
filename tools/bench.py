"""Benchmark: the bit-exact engine against the torch fake-quant path on ResNet-18.

    python tools/bench.py [--batch N] [--repeats R]

Prints, for the CIFAR (32x32) and ImageNet (224x224) variants: the torch fake-quant forward
time (float32, the path researchers train with), the engine's bit-exact forward time, their
ratio, the engine's conv-layer GMAC/s, its peak traced memory, and the GMAC/s of one conv
layer with a narrow saturating accumulator modelled MAC by MAC. Figures are wall-clock
medians on this machine; nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import tracemalloc

import numpy as np
import torch

import wageubn_sim
from wageubn_sim.engine.conv2d import Conv2dParams, conv2d
from wageubn_sim.engine.registers import Accumulator
from wageubn_sim.fixedpoint import Format
from wageubn_sim.models import resnet18


def conv_macs(graph) -> dict:
    macs = {}
    for node in graph.nodes:
        if node.op in ("conv2d", "linear"):
            w = node.arrays["weight"]
            pixels = int(np.prod(node.out_shape[1:])) if node.op == "conv2d" else 1
            macs[node.name] = int(np.prod(w.shape)) * pixels
    return macs


def median_time(fn, repeats):
    fn()  # warm-up (JIT, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_resnet(label, size, batch, repeats, cifar):
    torch.manual_seed(0)
    model = wageubn_sim.quantize_model(resnet18(10 if cifar else 1000, cifar)).eval()
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size))
    graph = wageubn_sim.compile(model, x[:1])
    xq = torch.from_numpy(graph.quantize_input(x) * 2.0 ** -8).float()
    with torch.no_grad():
        t_torch = median_time(lambda: model.float()(xq), repeats)
    t_engine = median_time(lambda: graph.run(x), repeats)
    timings = {}
    graph.run(x, timings=timings)
    macs = conv_macs(graph)
    conv_time = sum(timings[n] for n in macs)
    tracemalloc.start()
    graph.run(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    total = sum(macs.values()) * batch
    print(f"{label}: batch {batch}, {total / 1e9:.2f} GMAC")
    print(f"  torch fake-quant forward (float32): {t_torch * 1e3:9.1f} ms")
    print(f"  engine bit-exact forward:           {t_engine * 1e3:9.1f} ms   "
          f"(torch / engine = {t_torch / t_engine:.2f}x)")
    print(f"  engine conv+linear layers:          {total / conv_time / 1e9:9.1f} GMAC/s")
    print(f"  engine peak traced memory:          {peak / 2**20:9.1f} MiB")


def bench_narrow(repeats):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, 64, 56, 56))
    w = rng.integers(-127, 128, (64, 64, 3, 3))
    macs = 64 * 64 * 9 * 56 * 56
    for acc in (Accumulator(20, "SAT"), Accumulator(20, "SAT", "kernel_major", 4)):
        p = Conv2dParams(Format(8, 7), padding=(1, 1), accumulator=acc)
        t = median_time(lambda: conv2d(x, 7, w, None, p), repeats)
        print(f"  narrow accumulator s20 SAT, {acc.mac_order}, k_split={acc.k_split}: "
              f"{macs / t / 1e9:.2f} GMAC/s (64x64x3x3 conv on 56x56, MAC by MAC)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (default 3)")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}")
    bench_resnet("ResNet-18 CIFAR 32x32", 32, args.batch, args.repeats, cifar=True)
    bench_resnet("ResNet-18 ImageNet 224x224", 224, max(1, args.batch // 8), args.repeats, cifar=False)
    print("narrow-accumulator mode:")
    bench_narrow(args.repeats)


if __name__ == "__main__":
    main()
