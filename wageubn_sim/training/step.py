"""A bit-exact integer training step for networks of Conv2d, Linear, BatchNorm2d (batch
statistics), ReLU, ReLU6, MaxPool2d, AvgPool2d / global average pooling (power-of-two windows),
Add and Flatten, and Adder2d with AdderNet's gradients (docs/arithmetic.md §10).

One step, in the order the torch path runs it:

1. forward: the engine, with fw(master weights) and Q(bias) in the layers' registers;
2. the error at the logits: ``error_fn(logits)`` of the caller (a deterministic function of the
   integer logits, e.g. `cross_entropy_error`), as integers on its own grid;
3. backward, layers in reverse: at a MAC layer's output the error is E2-quantized, at an
   activation's output E1-quantized (where the torch path's modules put backward_e2 and
   backward_e1); errors of a tensor read by several layers are summed exactly;
4. G of each weight and bias gradient (a weight's with its decay 2**-s * master added first,
   where the layer has ``weight_decay_shift`` s), with the counter-based words of key = the
   layer's seed (weights) or seed + 1 (bias) and stream = the step number, as the torch path
   draws them;
5. the update unit (`update.momentum_update`) on the master weights and momenta.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np

from ..fixedpoint.floats import quantize
from ..fixedpoint.arrays import requantize
from ..fixedpoint.format import FixedArray, Format
from ..fixedpoint.modes import Overflow, Rounding
from ..fixedpoint.random_bits import random_u32
from ..engine.registry import OPS
from ..execution.run import RunResult, run_node
from ..scheme.quantizers import e1_quantize, e2_quantize, g_quantize, gbn_quantize, lr_quantize
from ..scheme.update import UpdateParams, aligned_sum, momentum_update

LOGIT_ERROR_FRAC = 24
ERROR_QUANTIZERS = {"E1": e1_quantize, "E2": e2_quantize}


def cross_entropy_error(logits: FixedArray, labels: np.ndarray, frac_bits: int = LOGIT_ERROR_FRAC) -> FixedArray:
    """d(mean cross-entropy)/d(logits) = (softmax - onehot) / N, computed in float64 from the
    integer logits and rounded half to even onto 2**-frac_bits: the same integers for any path
    that has the same logits."""
    z = logits.to_float()
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1.0
    return FixedArray(quantize(p / len(labels), Format(None, frac_bits)), frac_bits)


class _Timer:
    """``with timer(part):`` adds the block's seconds to timings[part] (nothing without a dict)."""

    def __init__(self, timings: dict | None):
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, part: str):
        if self.timings is None:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[part] = self.timings.get(part, 0.0) + time.perf_counter() - start


def _freeze(a: np.ndarray) -> None:
    """Make a forward tensor read-only, down to the array that owns its memory: what the
    forward derives from a layer's input (a conv's unrolled digits) is then kept with it for
    the weight gradient (`mac.weights.weight_cache`)."""
    while isinstance(a, np.ndarray):
        a.flags.writeable = False
        a = a.base


def _add(errors: dict, name: str, e: FixedArray) -> None:
    """Sum the errors a tensor receives from its readers, exactly."""
    errors[name] = aligned_sum(errors[name], e) if name in errors else e


class IntegerTrainer:
    """Integer training of a compiled graph. ``layers`` maps each MAC node to the torch-path
    module settings it needs: error width, G widths, SR keys (see `from_model`)."""

    def __init__(self, graph, layers: dict, lr: float, update: UpdateParams = UpdateParams()):
        bad = [f"{n.name} ({n.op})" for n in graph.nodes if OPS[n.op].backward is None]
        if bad:
            supported = sorted(name for name, spec in OPS.items() if spec.backward is not None)
            raise ValueError(f"integer training does not support {', '.join(bad)} yet; "
                             f"supported: {', '.join(supported)}")
        self.graph, self.layers, self.update = graph, layers, update
        self._nodes = {n.name: n for n in graph.nodes}
        self.lr = lr_quantize(lr)
        self.step_number = 0
        self._record = None
        self._timer = _Timer(None)
        self.master, self.momentum = {}, {}
        for node in graph.nodes:
            for role in OPS[node.op].trainable:
                if role in node.arrays:
                    q = layers[node.name][f"master_{role}"]
                    self.master[(node.name, role)] = FixedArray(q, update.weight_k - 1)
                    self.momentum[(node.name, role)] = FixedArray(np.zeros_like(q), update.acc_k - 1)
        self._refresh_registers()

    @classmethod
    def from_model(cls, model, example_input, lr: float, update: UpdateParams = UpdateParams(), **compile_args):
        """From a torch-path model whose parameters are on the master grid (see
        `function.optim.WageubnSGD.snap_to_grid`); its layers' settings and SR keys are read."""
        from ..graph.importer import compile_model
        graph = compile_model(model, example_input, **compile_args)
        modules = dict(model.named_modules())
        layers = {}
        for node in graph.nodes:
            if not OPS[node.op].trainable:
                continue
            m = modules[node.source]
            info = {"error_k": m.error_bit_width, "grad_k": m.grad_dec_bit_width,
                    "grad_range_k": m.grad_range_bit_width, "grad_bn_k": m.grad_bn_bit_width,
                    "weight_key": m.grad_sources["weight"].seed, "bias_key": m.grad_sources["bias"].seed,
                    "decay_shift": getattr(m, "weight_decay_shift", None)}
            if OPS[node.op].train_forward is not None:  # BatchNorm: its batch statistics' registers
                info["std_register"] = Format.from_seed(m.var_dec_bit_width, m.var_all_bit_width)
                info["eps_lsbs"] = round(m.quantized_eps() * 2.0 ** (m.var_dec_bit_width - 1))
                info["momentum"] = m.momentum if m.momentum is not None else 0.1
                info["running_mean"] = m.running_mean.detach().double().cpu().numpy().copy()
                info["running_var"] = m.running_var.detach().double().cpu().numpy().copy()
            for role, attr in zip(OPS[node.op].trainable, ("weight", "bias")):
                p = getattr(m, attr)
                if p is not None:
                    info[f"master_{role}"] = quantize(p.detach().double().cpu().numpy(),
                                                      Format(None, update.weight_k - 1))
            layers[node.name] = info
        error_k = {n.name: modules[n.source].error_bit_width for n in graph.nodes if n.op == "activation"
                   and n.source in modules and hasattr(modules[n.source], "error_bit_width")}
        for name, k in error_k.items():
            layers[name] = {"error_k": k}
        return cls(graph, layers, lr, update)

    def _register_format(self, name: str, role: str) -> Format:
        """The format of a parameter's register in the forward (fw for weights, Q for the rest)."""
        return getattr(self._nodes[name].params, {"weight": "weight_fmt", "bias": "bias_fmt",
                                                  "gamma": "gamma_fmt", "beta": "beta_fmt"}[role])

    def _refresh_registers(self):
        """fw(master weights), Q(master bias), Q(gamma), Q(beta) into the graph's registers
        (the update writes them after each step, in the same pass)."""
        for (name, role), w in self.master.items():
            # an array of its own, read-only: the kernels' weight caches hold for the step
            q = requantize(w.q, w.frac_bits, self._register_format(name, role), Rounding.HALF_EVEN,
                           Overflow.SAT_SYM)
            q.flags.writeable = False
            self._nodes[name].arrays[role] = q

    def step(self, x, labels, error_fn=cross_entropy_error, record: dict | None = None,
             timings: dict | None = None):
        """One training step; returns the logits (FixedArray, read-only) it trained on.
        ``record``, if given, receives {(layer, role): FixedArray} of the step's tensors: ``error`` (as the
        layer's backward used it), ``<param>_grad_raw``, ``<param>_grad`` (after G / G_BN),
        ``<param>_master_before/after`` and ``<param>_momentum_before/after``. ``timings``, if
        given, receives the seconds spent per part of the step (forward, E1/E2, MAC backward,
        BatchNorm backward, other backward, G/G_BN, update)."""
        self._record = record
        self._timer = _Timer(timings)
        with self._timer("forward"):
            self._x_q = self.graph.quantize_input(x)
            _freeze(self._x_q)
            result = self._forward(self._x_q)
            logits = FixedArray(result.q, result.fmt.frac_bits)
        errors: dict = {}
        _add(errors, self.graph.outputs[0], error_fn(logits, np.asarray(labels)))
        grads = {}
        for node in reversed(self.graph.nodes):
            if node.name in errors:
                self._backward(node, result, errors.pop(node.name), errors, grads)
        with self._timer("update"):
            for key, g in grads.items():
                before = (self.master[key], self.momentum[key])
                name, role = key
                self.master[key], self.momentum[key], held = momentum_update(
                    self.master[key], self.momentum[key], g, self.lr, self.update,
                    register=self._register_format(name, role))
                held.flags.writeable = False  # read-only: the kernels' weight caches hold
                self._nodes[name].arrays[role] = held
                self._keep(name, f"{role}_grad", g)
                for state, b, a in (("master", before[0], self.master[key]),
                                    ("momentum", before[1], self.momentum[key])):
                    self._keep(name, f"{role}_{state}_before", b)
                    self._keep(name, f"{role}_{state}_after", a)
            self.step_number += 1
        return logits

    def _forward(self, x_q):
        """The engine forward, in training mode where an op has one (BatchNorm: the batch's
        statistics, which also move its running averages)."""
        values = {self.graph.inputs[0].name: (x_q, self.graph.inputs[0].fmt.frac_bits)}
        layers = {}
        for node in self.graph.nodes:
            ins = [values[i] for i in node.inputs]
            spec = OPS[node.op]
            if spec.train_forward is not None:
                info = self.layers[node.name]
                out, (sums, count, frac) = spec.train_forward(node.params, node.arrays, ins, info)
                self._update_running(info, sums, count, frac)
            else:
                out = run_node(node, ins, True)
            _freeze(out.q)
            values[node.name] = (out.q, out.fmt.frac_bits)
            layers[node.name] = out
        last = layers[self.graph.outputs[0]]
        return RunResult(last.q, last.fmt, layers)

    def _keep(self, layer: str, role: str, value: FixedArray) -> None:
        if self._record is not None:
            self._record[(layer, role)] = value

    @staticmethod
    def _update_running(info, sums, m, f_in):
        """The moving averages, in float from the unquantized batch statistics, as the official
        code keeps them (they serve inference only; they are not part of the bit-exact step):
        the batch's mean S1/M and biased variance (M S2 - S1**2)/M**2 from the exact sums
        (``sums`` = (S1, S2) per channel of the M values at 2**-f_in), each rounded once."""
        scale = 1 << max(f_in, 0), 1 << max(-f_in, 0)  # 2**f_in as a ratio of integers
        mean = np.array([s1 * scale[1] / (m * scale[0]) for s1 in sums[0]])
        var = np.array([(m * s2 - s1 * s1) * scale[1] ** 2 / (m * m * scale[0] ** 2)
                        for s1, s2 in zip(*sums)])
        momentum = info["momentum"]
        for key, stat in (("running_mean", mean), ("running_var", var)):
            info[key] = info[key] + momentum * (stat - info[key])

    def evaluate(self, x):
        """Inference with the current weights and the BatchNorm moving averages (eval mode)."""
        for node in self.graph.nodes:
            if OPS[node.op].train_forward is not None:  # BatchNorm's statistics: the averages now
                p, info = node.params, self.layers[node.name]
                mean = quantize(info["running_mean"], p.mean_fmt, Rounding.HALF_EVEN, Overflow.SAT_SYM)
                std = quantize(np.sqrt(info["running_var"]), info["std_register"], Rounding.HALF_EVEN,
                               Overflow.SAT_SYM) + info["eps_lsbs"]
                for name, q in (("mean", mean), ("std", std)):
                    q.flags.writeable = False
                    node.arrays[name] = q
        return self.graph.run(x)

    def _backward(self, node, result, e, errors, grads):
        """One node's backward (its op's spec): the error arriving at its output quantized as
        the scheme says there (E2 at a MAC layer's, E1 at an activation's), the error of each
        input added to what that input receives, each parameter's gradient through G (with the
        weight decay first) or G_BN."""
        spec, info = OPS[node.op], self.layers.get(node.name, {})
        if spec.error_quantizer is not None:
            with self._timer("E1/E2"):
                e = ERROR_QUANTIZERS[spec.error_quantizer](e, info.get("error_k", 8))
        if spec.trainable:
            self._keep(node.name, "error", e)
        ins = [self._input(node, result, i) for i in range(len(node.inputs))]
        part = ("MAC backward" if spec.mac else "BatchNorm backward" if spec.grad_quantizer == "G_BN"
                else "other backward")
        with self._timer(part):
            input_errors, raw = spec.backward(node.params, node.arrays, ins, result.layers[node.name], e)
            for name, dx in zip(node.inputs, input_errors):
                if name != self.graph.inputs[0].name:  # the network's input takes no error
                    _add(errors, name, dx)
        for role, grad in raw.items():
            if (node.name, role) not in self.master:
                continue
            if role == "weight" and info.get("decay_shift") is not None:  # before G, exactly
                w = self.master[(node.name, "weight")]
                grad = aligned_sum(grad, FixedArray(w.q, w.frac_bits + info["decay_shift"]))
            self._keep(node.name, f"{role}_grad_raw", grad)
            with self._timer("G/G_BN"):
                if spec.grad_quantizer == "G_BN":
                    grads[(node.name, role)] = gbn_quantize(grad, info["grad_bn_k"])
                else:
                    u = random_u32(info[f"{role}_key"], self.step_number, grad.q.size).reshape(grad.q.shape)
                    grads[(node.name, role)] = g_quantize(grad, u, info["grad_range_k"], info["grad_k"])

    def _input(self, node, result, i):
        name = node.inputs[i]
        if name == self.graph.inputs[0].name:
            return self._x_q, self.graph.inputs[0].fmt.frac_bits
        out = result.layers[name]
        return out.q, out.fmt.frac_bits
