"""Benchmark: the bit-exact engine against the torch fake-quant path on ResNet-18.

    python tools/bench.py [--batch N] [--rounds R] [--layers]
    python tools/bench.py --training [--batch N] [--rounds R]
    python tools/bench.py --data-parallel [--samples N] [--rounds R]
    python tools/bench.py --small [--rounds R]
    python tools/bench.py --float-scales [--rounds R]

Prints, for the CIFAR (32x32) and ImageNet (224x224) variants: the torch fake-quant forward
time (float32, the path researchers train with), the engine's bit-exact forward time, their
ratio, the engine's conv-layer GMAC/s (and torch's float32 conv2d on the same layers, the
reference the goals are stated against), its peak traced memory, the GMAC/s of one conv layer
with a narrow saturating accumulator modelled MAC by MAC, and the bare GEMMs the exact path
builds on. Nothing is asserted. ``--data-parallel`` times the dataset audit of ResNet-18 CIFAR
(`wageubn_sim.reports.audit` over an .npy of random inputs) serially and on local Dask clusters
of 1, 2, ... workers (up to the cores), in images/s; each cluster is started, warmed up (its
workers compile), then timed. ``--small`` times the small CNN of `models.small_cnn` (76,288
MACs an image) in one batch of 200, image by image and in a batch of 4096: the engine (its
compiled plan), the engine on one thread, the layer-by-layer path and torch float32, each as a
multiple of torch float32; then the image-by-image loop while a second engine process that the
bench starts and kills runs its own loop beside it. ``--float-scales`` times a CNN imported from
QONNX with Brevitas's default float scales (float biases and BatchNorms: thresholds layers)
against the same CNN with power-of-two scales, in images/s, batch 256 and image by image.

The machine's speed is printed next to each figure: torch's float32 conv2d on the same layers,
timed in the same rounds, with the engine's figure as a multiple of it (the goals were set on a
machine where that conv2d ran at about 113 GMAC/s: 100 GMAC/s for the conv layers is 0.88x
of it, 10 GMAC/s MAC by MAC 0.088x).

Shared 2-core machines drift (a plain sgemm loop here varies 2.5x within a minute), so torch
and the engine run alternately, round by round: the ratio is the median of the per-round
ratios (and the best times' ratio), and each other figure is given as median (best) over the
rounds.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

import wageubn_sim
from wageubn_sim.engine.mac import gemm
from wageubn_sim.engine.ops.conv2d import Conv2dParams, conv2d
from wageubn_sim.engine.registers import Accumulator
from wageubn_sim.execution.run import plan_of
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


def float_convs(graph, batch):
    """The network's conv layers as torch float32 conv2d calls on random data (the machine's
    reference speed, as the issue states its goals against torch fp32 conv2d)."""
    shapes = {i.name: i.shape for i in graph.inputs} | {n.name: n.out_shape for n in graph.nodes}
    calls = []
    for node in graph.nodes:
        if node.op == "conv2d":
            x = torch.randn((batch,) + tuple(shapes[node.inputs[0]]))
            w = torch.from_numpy(node.arrays["weight"].astype(np.float32))
            p = node.params
            calls.append((x, w, None, p.stride, p.padding, p.dilation, p.groups))
    return lambda: [torch.nn.functional.conv2d(*c) for c in calls]


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(values, higher_is_better=False, scale=1.0, fmt="{:.1f}"):
    """'median (best)' of per-round figures."""
    best = max(values) if higher_is_better else min(values)
    return f"{fmt.format(statistics.median(values) * scale)} ({fmt.format(best * scale)})"


def bench_resnet(label, size, batch, rounds, cifar, per_layer=False):
    torch.manual_seed(0)
    model = wageubn_sim.quantize_model(resnet18(10 if cifar else 1000, cifar)).eval()
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size))
    graph = wageubn_sim.compile(model, x[:1])
    xq = torch.from_numpy(graph.quantize_input(x) * 2.0 ** -8).float()
    model = model.float()
    macs = conv_macs(graph)
    total = sum(macs.values()) * batch
    conv_total = sum(macs[v.name] for v in graph.nodes if v.op == "conv2d") * batch
    reference = float_convs(graph, batch)
    with torch.no_grad():
        model(xq), graph.run(x), reference()  # warm-up (JIT, caches)
        t_torch, t_engine, ratios, rates, float_rates = [], [], [], [], []
        layer_times = {}
        for _ in range(rounds):
            t_torch.append(timed(lambda: model(xq)))
            t_engine.append(timed(lambda: graph.run(x)))
            ratios.append(t_torch[-1] / t_engine[-1])
            timings = {}
            graph.run(x, timings=timings)
            rates.append(total / sum(timings[n] for n in macs) / 1e9)
            for name in macs:
                layer_times.setdefault(name, []).append(timings[name])
            float_rates.append(conv_total / timed(reference) / 1e9)
    tracemalloc.start()
    graph.run(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"{label}: batch {batch}, {total / 1e9:.2f} GMAC, {rounds} rounds, median (best)")
    print(f"  torch fake-quant forward (float32):  {summary(t_torch, scale=1e3)} ms")
    print(f"  engine bit-exact forward:            {summary(t_engine, scale=1e3)} ms")
    print(f"  torch / engine:                      {statistics.median(ratios):.2f}x median of "
          f"rounds, {min(t_torch) / min(t_engine):.2f}x best against best")
    print(f"  engine conv+linear layers:           {summary(rates, True)} GMAC/s")
    print(f"  torch float32 conv2d, same layers:   {summary(float_rates, True)} GMAC/s "
          "(the machine's reference)")
    print("  engine / float32 conv2d:             "
          f"{statistics.median(r / f for r, f in zip(rates, float_rates)):.2f}x median of rounds")
    print(f"  engine peak traced memory:           {peak / 2**20:.1f} MiB")
    if per_layer:
        conv_time = sum(statistics.median(t) for t in layer_times.values())
        for name, t in layer_times.items():
            t = statistics.median(t)
            print(f"    {name:<24} {t * 1e3:6.2f} ms {100 * t / conv_time:5.1f}% "
                  f"{macs[name] * batch / t / 1e9:6.1f} GMAC/s")


def bench_narrow(rounds):
    """One 64x64x3x3 conv on 56x56 MAC by MAC, each round next to torch's float32 conv2d of
    the same layer (the machine's reference at that moment)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, 64, 56, 56))
    w = rng.integers(-127, 128, (64, 64, 3, 3))
    macs = 64 * 64 * 9 * 56 * 56
    xf, wf = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(w.astype(np.float32))
    reference = lambda: torch.nn.functional.conv2d(xf, wf, padding=1)  # noqa: E731
    for acc in (Accumulator(20, "SAT"), Accumulator(20, "SAT", "kernel_major", 4)):
        p = Conv2dParams(Format(8, 7), padding=(1, 1), accumulator=acc)
        conv2d(x, 7, w, None, p), reference()  # warm-up (JIT)
        rates, float_rates = [], []
        for _ in range(rounds):
            rates.append(macs / timed(lambda: conv2d(x, 7, w, None, p)) / 1e9)
            float_rates.append(macs / timed(reference) / 1e9)
        ratios = [r / f for r, f in zip(rates, float_rates)]
        print(f"  narrow accumulator s20 SAT, {acc.mac_order}, k_split={acc.k_split}: "
              f"{summary(rates, True, fmt='{:.2f}')} GMAC/s "
              "(64x64x3x3 conv on 56x56, MAC by MAC)")
        print(f"    torch float32 conv2d, same layer: {summary(float_rates, True)} GMAC/s; "
              f"narrow / float32: {statistics.median(ratios):.3f} median of rounds")


def bench_gemm(rounds):
    """The bare GEMMs under the exact path, on a conv-shaped product (8192 x 576 x 64)."""
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (8192, 576)).astype(np.int8)
    b = rng.integers(-128, 128, (576, 64)).astype(np.int8)
    macs = a.shape[0] * a.shape[1] * b.shape[1]
    int8_matmul = gemm.int8_gemm()
    af, bf = a.astype(np.float32), b.astype(np.float32)
    for label, fn in (("int8 GEMM (torch._int_mm)", None if int8_matmul is None else lambda: int8_matmul(a, b)),
                      ("float32 BLAS (numpy)", lambda: af @ bf)):
        if fn is None:
            print(f"  {label}: not available")
            continue
        fn()
        rates = [macs / timed(fn) / 1e9 for _ in range(rounds)]
        print(f"  {label}: {summary(rates, True)} GMAC/s (8192x576 @ 576x64)")


class ExclusiveTimer:
    """Wraps functions so that each call's time, less that of wrapped calls inside it, adds
    to its part: a profile by parts, for one instrumented run."""

    def __init__(self):
        self.parts, self._stack = {}, []

    def wrap(self, part, fn):
        def timed_call(*args, **kwargs):
            start = time.perf_counter()
            self._stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = self._stack.pop()
                self.parts[part] = self.parts.get(part, 0.0) + elapsed - inner
                if self._stack:
                    self._stack[-1] += elapsed
        return timed_call


def torch_path_parts(step):
    """One torch-path step with its quantizers timed: {part: seconds}."""
    from wageubn_sim.function import batchnorm as bn, number
    timer = ExclusiveTimer()
    saved = []

    def patch(owner, name, part, static=False):
        fn = getattr(owner, name)
        saved.append((owner, name, owner.__dict__[name]))
        wrapped = timer.wrap(part, fn)
        setattr(owner, name, staticmethod(wrapped) if static else wrapped)

    def quantize_values(*args, **kwargs):  # forward W/A registers, or G_BN in the backward
        backward = torch._C._current_autograd_node() is not None
        return timer.wrap("G_BN" if backward else "W, A and registers", saved_quantize)(*args, **kwargs)

    saved_quantize = number.quantize_values
    saved.append((number, "quantize_values", saved_quantize))
    number.quantize_values = quantize_values
    patch(number, "shift_values", "E1")
    patch(number, "flag_values", "E2")
    patch(number, "const_values", "G (stochastic rounding)")
    patch(bn, "grid_integers", "BatchNorm grid search")
    patch(bn.BatchNorm2d, "_exact_batch_registers", "BatchNorm batch statistics")
    patch(bn._IntegerBatchNorm, "backward", "BatchNorm integer backward", static=True)
    try:
        total = timed(step)
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
    timer.parts["the rest (torch's own work, the optimizer)"] = total - sum(timer.parts.values())
    return timer.parts, total


def bench_training(batches, rounds):
    """Training steps of ResNet-18 CIFAR on random data, alternating round by round: float
    torch (SGD, momentum 0.9) in float32 and float64, the WAGEUBN torch path (WageubnSGD) in
    float32 (as researchers run it) and float64 (where it is bit-exact with the engine), and
    the integer engine (`IntegerTrainer.step`)."""
    from wageubn_sim.function.optim import WageubnSGD
    from wageubn_sim.training import IntegerTrainer
    for batch in batches:
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((batch, 3, 32, 32)), rng.integers(0, 10, batch)
        steps = {}
        for dtype in (torch.float32, torch.float64):
            torch.manual_seed(0)
            net = resnet18(10, cifar=True).to(dtype).train()
            opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
            xt, yt = torch.from_numpy(x).to(dtype), torch.from_numpy(y)
            steps[f"float {str(dtype)[6:]}"] = _torch_step(net, opt, xt, yt)
            torch.manual_seed(0)
            qnet = wageubn_sim.quantize_model(resnet18(10, cifar=True)).to(dtype).train()
            qopt = WageubnSGD(qnet.parameters(), 0.25)
            qopt.snap_to_grid()
            steps[f"torch path {str(dtype)[6:]}"] = _torch_step(qnet, qopt, xt, yt)
        torch.manual_seed(0)
        qnet = wageubn_sim.quantize_model(resnet18(10, cifar=True)).double().train()
        WageubnSGD(qnet.parameters(), 0.25).snap_to_grid()
        trainer = IntegerTrainer.from_model(qnet, x, lr=0.25)
        parts: dict = {}
        steps["integer engine"] = lambda: trainer.step(x, y, timings=parts)
        for step in steps.values():  # warm-up (JIT, caches)
            step()
        parts.clear()
        times = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                times[name].append(timed(step))
        print(f"ResNet-18 CIFAR training step: batch {batch}, {rounds} rounds, median (best)")
        for name, t in times.items():
            print(f"  {name + ':':<22}{summary(t, scale=1e3):>20} ms")
        for num, den in (("torch path float32", "float float32"), ("torch path float64", "float float64"),
                         ("integer engine", "float float32"), ("integer engine", "float float64")):
            ratio = statistics.median(a / b for a, b in zip(times[num], times[den]))
            print(f"  {num} / {den}: {ratio:.2f}x median of rounds")
        total = sum(times["integer engine"])
        print("  integer engine, by part (share of its steps):")
        parts["other (pooling, Add, Flatten backward, the logits' error)"] = total - sum(parts.values())
        for part, t in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"    {part:<58}{100 * t / total:5.1f}%")
        for dtype in ("float32", "float64"):
            torch_parts, total = torch_path_parts(steps[f"torch path {dtype}"])
            quantizers = sum(t for p, t in torch_parts.items()
                             if p in ("E1", "E2", "G (stochastic rounding)", "G_BN", "BatchNorm grid search"))
            print(f"  torch path {dtype}, by part (one instrumented step, {total * 1e3:.0f} ms); "
                  f"E1, E2, G, G_BN and the grid search: {100 * quantizers / total:.1f}%")
            for part, t in sorted(torch_parts.items(), key=lambda kv: -kv[1]):
                print(f"    {part:<58}{100 * t / total:5.1f}%")


def bench_data_parallel(samples, rounds):
    import tempfile
    from pathlib import Path

    from wageubn_sim.data.shards import dask_client
    from wageubn_sim.reports.audit import audit
    torch.manual_seed(0)
    model = wageubn_sim.quantize_model(resnet18(num_classes=10, cifar=True)).eval()
    rng = np.random.default_rng(0)
    graph = wageubn_sim.compile(model, rng.standard_normal((1, 3, 32, 32)))
    batch, shard = 32, 64
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, rng.standard_normal((samples, 3, 32, 32)))
        print(f"dataset audit, ResNet-18 CIFAR, {samples} images (batch {batch}, shards of {shard}), images/s:")
        reference = None
        for workers in [None] + list(range(1, (os.cpu_count() or 1) + 1)):
            with dask_client(workers) as client:
                audit(graph, path, client, batch, shard)  # warm up: compile in every process
                rates = []
                for _ in range(rounds):
                    start = time.perf_counter()
                    report = audit(graph, path, client, batch, shard).to_json()
                    rates.append(samples / (time.perf_counter() - start))
                    reference = reference or report
                    assert report == reference  # the same bytes, serial or not
            label = "serial (no cluster)" if workers is None else f"{workers} worker{'s' * (workers > 1)}"
            print(f"  {label:<22}{summary(rates, higher_is_better=True, fmt='{:.0f}')}")


def _small_cnn_graph():
    """The small CNN (`models.small_cnn`), quantized and compiled, and its float32 twin."""
    from wageubn_sim.models import small_cnn
    torch.manual_seed(0)
    model = wageubn_sim.quantize_model(small_cnn()).eval()
    graph = wageubn_sim.compile(model, np.random.default_rng(0).standard_normal((1, 3, 16, 16)))
    torch.manual_seed(0)
    return graph, small_cnn().eval()


def _images_per_second(run, x, per_image, seconds=0.5):
    """Images/s of ``run`` over x: one call for the batch, or (per_image) one call per image,
    repeated for at least ``seconds``."""
    done, start = 0, time.perf_counter()
    while True:
        if per_image:
            for i in range(len(x)):
                run(x[i:i + 1])
        else:
            run(x)
        done += len(x)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def busy_engine_loop():
    """What a second engine process does (the bench's load): the small CNN, image by image,
    until it is killed."""
    graph, _ = _small_cnn_graph()
    x = np.random.default_rng(1).standard_normal((64, 3, 16, 16))
    while True:
        for i in range(len(x)):
            graph.run(x[i:i + 1])


def bench_small(rounds):
    import subprocess
    import sys

    import numba
    graph, float_model = _small_cnn_graph()
    x = np.random.default_rng(0).standard_normal((4096, 3, 16, 16))
    xt = torch.from_numpy(x).float()
    plan = plan_of(graph)
    exact = np.array_equal(graph.run(x).q, graph.run(x, plan=False).q)
    print(f"small CNN 16x16x3 (76,288 MACs an image), plan: {'yes' if plan else 'no'} "
          f"({plan.dtype.name if plan else '-'} arena), bit-exact to the layer-by-layer path: "
          f"{'yes' if exact else 'NO'}; images/s, {rounds} rounds, median (best)")
    cases = [("one batch of 200", 200, False), ("one image at a time", 200, True),
             ("a batch of 4096", 4096, False)]
    with torch.no_grad():
        float_model(xt[:200]), graph.run(x[:200]), graph.run(x[:1]), graph.run(x[:200], plan=False)
        for label, n, per_image in cases:
            figures = {"engine": [], "engine, one thread": [], "layer by layer": [], "torch float32": []}
            for _ in range(rounds):
                figures["torch float32"].append(_images_per_second(lambda v: float_model(v), xt[:n], per_image))
                figures["engine"].append(_images_per_second(graph.run, x[:n], per_image))
                figures["layer by layer"].append(_images_per_second(
                    lambda v: graph.run(v, plan=False), x[:n], per_image))
                threads = numba.get_num_threads()
                numba.set_num_threads(1)
                figures["engine, one thread"].append(_images_per_second(graph.run, x[:n], per_image))
                numba.set_num_threads(threads)
            print(f"  {label}:")
            for name, values in figures.items():
                ratio = statistics.median(values) / statistics.median(figures["torch float32"])
                print(f"    {name:<22}{summary(values, True, fmt='{:.0f}'):>18}   {ratio:5.2f}x torch float32")
        # the same per-image loop with a second engine process running its own beside it
        quiet = [_images_per_second(graph.run, x[:200], True) for _ in range(rounds)]
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        one_thread = [_images_per_second(graph.run, x[:200], True) for _ in range(rounds)]
        numba.set_num_threads(threads)
        other = subprocess.Popen([sys.executable, __file__, "--busy-engine"])
        try:
            time.sleep(5)  # it imports and compiles (from the cache) before it loads the cores
            loaded = [_images_per_second(graph.run, x[:200], True) for _ in range(rounds)]
        finally:
            other.kill()
            other.wait()
    print("  one image at a time with a second engine process looping beside it:")
    print(f"    quiet                 {summary(quiet, True, fmt='{:.0f}'):>18}")
    print(f"    quiet, one thread     {summary(one_thread, True, fmt='{:.0f}'):>18}")
    print(f"    loaded                {summary(loaded, True, fmt='{:.0f}'):>18}   "
          f"{statistics.median(loaded) / statistics.median(quiet):.2f}x quiet, "
          f"{statistics.median(loaded) / statistics.median(one_thread):.2f}x one thread quiet")


def _torch_step(net, opt, x, y):
    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return step


def float_scale_cnn(float_scales: bool, size: int = 32):
    """A QONNX CNN, input Quant -> [Conv 3x3 (+bias) -> BatchNorm -> Relu -> Quant (uint8) ->
    MaxPool 2] x 2 -> Flatten -> Gemm -> Quant (int8), with Brevitas's default float scales
    (float biases, the BatchNorm in float: three thresholds layers) or with power-of-two ones
    (quantized biases, the BatchNorm left out: each Quant the layer's output register)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits, nodes = {"zero": 0.0, "b8": 8.0, "b32": 32.0}, []

    def scale(name, value):
        inits[name] = value if float_scales else 2.0 ** round(np.log2(value))
        return name

    def quant(x, out, s, bits="b8", signed=1):
        nodes.append(helper.make_node("Quant", [x, s, "zero", bits], [out], name=out, signed=signed, narrow=0,
                                      rounding_mode="ROUND", domain="qonnx.custom_op.general"))

    quant("x", "xq", scale("s_x", 0.0173))
    x, channels, side = "xq", 3, size
    for k, out_channels in enumerate((16, 32)):
        w = rng.standard_normal((out_channels, channels, 3, 3)) * 0.2
        inits[f"w{k}"] = w
        quant(f"w{k}", f"wq{k}", scale(f"sw{k}", float(np.abs(w).max() / 127)))
        bias = rng.standard_normal(out_channels) * 0.1
        inits[f"bias{k}"] = bias
        if not float_scales:  # an Int32Bias on the accumulator's grid
            quant(f"bias{k}", f"bq{k}", scale(f"sb{k}", inits["s_x" if k == 0 else f"sa{k - 1}"] * inits[f"sw{k}"]), "b32")
        nodes.append(helper.make_node("Conv", [x, f"wq{k}", f"bias{k}" if float_scales else f"bq{k}"], [f"c{k}"],
                                      name=f"conv{k}", pads=[1, 1, 1, 1]))
        y = f"c{k}"
        if float_scales:
            for name, values in (("g", rng.uniform(0.5, 1.5, out_channels)), ("be", rng.normal(0, 0.1, out_channels)),
                                 ("mu", rng.normal(0, 0.1, out_channels)), ("var", rng.uniform(0.5, 2, out_channels))):
                inits[f"{name}{k}"] = values
            nodes.append(helper.make_node("BatchNormalization", [y] + [f"{n}{k}" for n in ("g", "be", "mu", "var")],
                                          [f"n{k}"], name=f"bn{k}"))
            y = f"n{k}"
        nodes.append(helper.make_node("Relu", [y], [f"r{k}"], name=f"relu{k}"))
        quant(f"r{k}", f"a{k}", scale(f"sa{k}", 0.0371 * (k + 1)), signed=0)
        nodes.append(helper.make_node("MaxPool", [f"a{k}"], [f"p{k}"], name=f"pool{k}", kernel_shape=[2, 2],
                                      strides=[2, 2]))
        x, channels, side = f"p{k}", out_channels, side // 2
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    w = rng.standard_normal((10, channels * side * side)) * 0.05
    inits["wf"] = w
    quant("wf", "wqf", scale("swf", float(np.abs(w).max() / 127)))
    nodes.append(helper.make_node("Gemm", ["flat", "wqf"], ["fc"], name="fc", transB=1))
    quant("fc", "y", scale("s_y", 0.21))
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                   helper.make_opsetid("qonnx.custom_op.general", 2)])


def bench_float_scales(rounds):
    """The engine on the same CNN with float scales (thresholds) and with power-of-two scales
    (output registers), in images/s, batch 256 and image by image, alternating round by round."""
    from wageubn_sim.qonnx import from_qonnx
    graphs = {kind: from_qonnx(float_scale_cnn(kind == "float")) for kind in ("float", "pow2")}
    x = np.random.default_rng(1).uniform(-1, 1, (256, 3, 32, 32)).astype(np.float32)
    for kind, graph in graphs.items():
        print(f"{kind}: {[n.op for n in graph.nodes]}")
        graph.run(x[:2])  # compile
    for per_image in (False, True):
        rates = {kind: [] for kind in graphs}
        for _ in range(rounds):
            for kind, graph in graphs.items():
                rates[kind].append(_images_per_second(graph.run, x[:64] if per_image else x, per_image))
        ratio = [f / p for f, p in zip(rates["float"], rates["pow2"])]
        print(f"{'image by image' if per_image else 'batch 256'}: float scales "
              f"{summary(rates['float'], True)} images/s, power-of-two {summary(rates['pow2'], True)}; "
              f"float / power-of-two {statistics.median(ratio):.2f}x (median of rounds)")


def _every_tap_equal(graph, folder, q) -> bool:
    """Whether `golden --taps` gives every layer's output, accumulator and events as the
    engine's traced run does."""
    import json
    import subprocess

    from wageubn_sim.execution.run import node_events
    from wageubn_sim.vectors.bundle import file_safe
    np.save(folder / "taps_in.npy", q.astype(np.int64))
    subprocess.run([str(folder / "golden"), "--taps", str(folder / "taps"), str(folder / "taps_in.npy"),
                    str(folder / "taps_out.npy")], check=True)
    traced = graph.run(q, trace=True)
    events = json.loads((folder / "taps" / "events.json").read_text())
    for node in graph.nodes:
        out, where = traced.layers[node.name], folder / "taps" / file_safe(node.name)
        if not np.array_equal(np.load(where / "output.npy"), out.q) or (
                out.acc_fmt is not None and not np.array_equal(np.load(where / "accumulator.npy"),
                                                               out.trace["accumulator"])):
            return False
        if events[file_safe(node.name)] != {r: e.counts() for r, e in node_events(out).items()}:
            return False
    return True


def bench_codegen(rounds):
    """The generated C model (`wageubn-sim codegen`, gcc -O2) against the engine's one-thread
    rate: the small CNN image by image, ResNet-18 CIFAR; its build time and equality."""
    import shutil
    import subprocess
    import tempfile

    import numba
    from wageubn_sim.codegen import generate_c

    def build(graph, folder):
        files = generate_c(graph)
        assert files == generate_c(graph), "the folder is not the same bytes twice"
        for rel, data in files.items():
            (folder / rel).write_bytes(data)
        start = time.perf_counter()
        subprocess.run(["make", "-s", "-C", str(folder), "CFLAGS=-O2"], check=True)
        return time.perf_counter() - start

    def c_rate(folder, q):
        np.save(folder / "in.npy", q.astype(np.int64))
        run = lambda: subprocess.run([str(folder / "golden"), str(folder / "in.npy"), str(folder / "out.npy")], check=True)
        run()
        return [len(q) / timed(run) for _ in range(rounds)]

    def engine_rate(graph, x, per_image):
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            graph.run(x[:1])
            return [_images_per_second(graph.run, x, per_image) for _ in range(rounds)]
        finally:
            numba.set_num_threads(threads)

    small, _ = _small_cnn_graph()
    torch.manual_seed(0)
    resnet = wageubn_sim.compile(wageubn_sim.quantize_model(resnet18(10, True)).eval(),
                                 np.random.default_rng(0).standard_normal((1, 3, 32, 32)))
    with tempfile.TemporaryDirectory() as tmp:
        for label, graph, n, per_image in (("small CNN 16x16x3, one image at a time", small, 2000, True),
                                           ("ResNet-18 CIFAR 32x32", resnet, 16, False)):
            folder = Path(tmp) / label.split()[0]
            folder.mkdir()
            seconds = build(graph, folder)
            x = np.random.default_rng(1).standard_normal((n, *graph.inputs[0].shape))
            q = graph.quantize_input(x)
            c = c_rate(folder, q)
            exact = np.array_equal(np.load(folder / "out.npy"), graph.run(q).q)
            taps = _every_tap_equal(graph, folder, q[:2])
            engine = engine_rate(graph, x, per_image)
            print(f"{label}: C model (gcc -O2, built in {seconds:.1f} s) {summary(c, True, fmt='{:.0f}')} "
                  f"images/s, engine one thread {summary(engine, True, fmt='{:.0f}')} images/s: "
                  f"{statistics.median(c) / statistics.median(engine):.2f}x; equal to the engine: "
                  f"{'yes' if exact else 'NO'}; every tap and event count of 2 images: {'equal' if taps else 'DIFFER'}")
            shutil.rmtree(folder)


def main():
    wageubn_sim.keep_freed_memory()  # the command line's memory policy, as its figures assume
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--rounds", type=int, default=9,
                        help="timed rounds per figure (default 9)")
    parser.add_argument("--layers", action="store_true",
                        help="also print each conv/linear layer's median time and GMAC/s")
    parser.add_argument("--training", action="store_true",
                        help="benchmark training steps instead (batch 8 and 32, 5 rounds by default)")
    parser.add_argument("--data-parallel", action="store_true",
                        help="benchmark the dataset audit, serial and on 1, 2, ... Dask workers")
    parser.add_argument("--samples", type=int, default=512, help="images for --data-parallel (default 512)")
    parser.add_argument("--small", action="store_true",
                        help="benchmark the small CNN: batch 200, image by image, 4096, and beside "
                             "a second engine process")
    parser.add_argument("--float-scales", action="store_true",
                        help="benchmark a CNN with float scales (thresholds) against its power-of-two twin")
    parser.add_argument("--codegen", action="store_true",
                        help="benchmark the generated C model against the engine's one-thread rate")
    parser.add_argument("--busy-engine", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.busy_engine:
        busy_engine_loop()
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}")
    if args.small:
        bench_small(args.rounds if "--rounds" in os.sys.argv else 3)
        return
    if args.codegen:
        bench_codegen(args.rounds if "--rounds" in os.sys.argv else 3)
        return
    if args.float_scales:
        bench_float_scales(args.rounds if "--rounds" in os.sys.argv else 5)
        return
    if args.data_parallel:
        bench_data_parallel(args.samples, args.rounds if "--rounds" in os.sys.argv else 3)
        return
    if args.training:
        rounds = args.rounds if "--rounds" in os.sys.argv else 5
        bench_training([args.batch] if "--batch" in os.sys.argv else [8, 32], rounds)
        return
    bench_resnet("ResNet-18 CIFAR 32x32", 32, args.batch, args.rounds, cifar=True,
                 per_layer=args.layers)
    bench_resnet("ResNet-18 ImageNet 224x224", 224, max(1, args.batch // 8), args.rounds,
                 cifar=False, per_layer=args.layers)
    print("narrow-accumulator mode:")
    bench_narrow(args.rounds)
    print("the bare GEMMs of the exact path:")
    bench_gemm(args.rounds)


if __name__ == "__main__":
    main()
