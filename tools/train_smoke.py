"""A smoke test of training speed (and exactness) at ResNet scale:

    python tools/train_smoke.py [--steps 20] [--batch 8]

Trains ResNet-18 CIFAR on seeded random data for STEPS steps with the integer engine
(`IntegerTrainer.step`) and with the WAGEUBN torch path in float64 (`WageubnSGD`), checking
after every step that their logits, master weights and momenta agree bit for bit, and times a
float torch step (float32, SGD with momentum) beside them. Prints each path's median step time
and exits 1 if the two WAGEUBN paths ever differ. Nothing else is asserted: speed goals live in
`tools/bench.py --training`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

import wageubn_sim
from wageubn_sim.function.optim import WageubnSGD
from wageubn_sim.models import resnet18
from wageubn_sim.training import IntegerTrainer
from wageubn_sim.training.step import cross_entropy_error


def main(argv=None) -> int:
    wageubn_sim.keep_freed_memory()  # the command line's memory policy, as its figures assume
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((args.batch, 3, 32, 32)), rng.integers(0, 10, args.batch))
            for _ in range(args.steps)]
    torch.manual_seed(0)
    model = wageubn_sim.quantize_model(resnet18(10, cifar=True)).double().train()
    opt = WageubnSGD(model.parameters(), lr=0.25)
    opt.snap_to_grid()
    trainer = IntegerTrainer.from_model(model, data[0][0], lr=0.25)
    params = dict(model.named_parameters())
    names = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}
    sources = {n.name: n.source for n in trainer.graph.nodes}
    torch.manual_seed(0)
    float_net = resnet18(10, cifar=True).train()
    float_opt = torch.optim.SGD(float_net.parameters(), lr=0.05, momentum=0.9)
    times = {"integer engine": [], "torch path float64": [], "float torch float32": []}
    for step, (x, y) in enumerate(data):
        start = time.perf_counter()
        logits = trainer.step(x, y)
        times["integer engine"].append(time.perf_counter() - start)

        start = time.perf_counter()
        xq = trainer.graph.quantize_input(x) * 2.0 ** -trainer.graph.inputs[0].fmt.frac_bits
        out = model(torch.from_numpy(xq))
        out.backward(torch.from_numpy(cross_entropy_error(logits, y).to_float()))
        opt.step()
        opt.zero_grad()
        times["torch path float64"].append(time.perf_counter() - start)

        start = time.perf_counter()
        float_opt.zero_grad()
        torch.nn.functional.cross_entropy(float_net(torch.from_numpy(x).float()),
                                          torch.from_numpy(y)).backward()
        float_opt.step()
        times["float torch float32"].append(time.perf_counter() - start)

        diverged = not np.array_equal(out.detach().numpy(), logits.to_float())
        for (layer, role), master in trainer.master.items():
            p = params[f"{sources[layer]}.{names[role]}"]
            diverged |= not np.array_equal(p.detach().numpy(), master.to_float())
            diverged |= not np.array_equal(opt.state[p]["momentum"].numpy(),
                                           trainer.momentum[(layer, role)].to_float())
        if diverged:
            print(f"step {step}: the integer engine and the torch path differ", file=sys.stderr)
            return 1
    print(f"ResNet-18 CIFAR, batch {args.batch}, {args.steps} steps, both WAGEUBN paths bit-exact "
          "at every step; median step time (the first step, with its JIT warm-up, included):")
    for name, t in times.items():
        print(f"  {name + ':':<22}{statistics.median(t) * 1e3:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
