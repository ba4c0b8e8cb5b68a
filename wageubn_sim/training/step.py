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
import dataclasses
import time

import numpy as np

from ..fixedpoint.core import quantize, requantize
from ..fixedpoint.format import FixedArray, Format
from ..fixedpoint.modes import Overflow, Rounding
from ..fixedpoint.random_bits import random_u32
from ..engine.activation_backward import (activation_backward, avg_pool2d_backward,
                                          max_pool2d_backward)
from ..engine.batchnorm_backward import batchnorm2d_backward
from ..engine.adder2d_backward import adder2d_backward
from ..engine.conv2d_backward import conv2d_backward, linear_backward
from ..scheme.quantizers import e1_quantize, e2_quantize, g_quantize, gbn_quantize, lr_quantize
from .update import UpdateParams, aligned_sum, momentum_update

MAC_OPS = ("conv2d", "linear", "adder2d")
SUPPORTED_OPS = MAC_OPS + ("batchnorm2d", "activation", "max_pool2d", "avg_pool2d", "add", "flatten")
PARAM_ROLES = {op: ("weight", "bias") for op in MAC_OPS} | {"batchnorm2d": ("gamma", "beta")}
LOGIT_ERROR_FRAC = 24


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
    the weight gradient (`mac.weight_cache`)."""
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
        bad = [f"{n.name} ({n.op})" for n in graph.nodes if n.op not in SUPPORTED_OPS]
        if bad:
            raise ValueError(f"integer training does not support {', '.join(bad)} yet; "
                             f"supported: {', '.join(SUPPORTED_OPS)}")
        self.graph, self.layers, self.update = graph, layers, update
        self._nodes = {n.name: n for n in graph.nodes}
        self.lr = lr_quantize(lr)
        self.step_number = 0
        self._record = None
        self._timer = _Timer(None)
        self.master, self.momentum = {}, {}
        for node in graph.nodes:
            for role in PARAM_ROLES.get(node.op, ()):
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
            if node.op not in PARAM_ROLES:
                continue
            m = modules[node.source]
            info = {"error_k": m.error_bit_width, "grad_k": m.grad_dec_bit_width,
                    "grad_range_k": m.grad_range_bit_width, "grad_bn_k": m.grad_bn_bit_width,
                    "weight_key": m.grad_sources["weight"].seed, "bias_key": m.grad_sources["bias"].seed,
                    "decay_shift": getattr(m, "weight_decay_shift", None)}
            if node.op == "batchnorm2d":
                info["std_register"] = Format.from_seed(m.var_dec_bit_width, m.var_all_bit_width)
                info["eps_lsbs"] = round(m.quantized_eps() * 2.0 ** (m.var_dec_bit_width - 1))
                info["momentum"] = m.momentum if m.momentum is not None else 0.1
                info["running_mean"] = m.running_mean.detach().double().cpu().numpy().copy()
                info["running_var"] = m.running_var.detach().double().cpu().numpy().copy()
            for role, attr in zip(PARAM_ROLES[node.op], ("weight", "bias")):
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
            if node.name not in errors:
                continue
            e = errors.pop(node.name)
            out = result.layers[node.name]
            if node.op in MAC_OPS:
                with self._timer("E1/E2"):
                    e = e2_quantize(e, self.layers[node.name]["error_k"])
                self._keep(node.name, "error", e)
                self._mac_backward(node, out, e, errors, grads)
            elif node.op == "activation":
                with self._timer("E1/E2"):
                    e = e1_quantize(e, self.layers.get(node.name, {}).get("error_k", 8))
                x_in, x_frac = self._input(node, result, 0)
                x_seen = out.trace.get("input", x_in)
                frac = node.params.input_register.frac_bits if node.params.input_register else x_frac
                with self._timer("other backward"):
                    _add(errors, node.inputs[0], FixedArray(
                        activation_backward(x_seen, frac, e.q, node.params.ceiling), e.frac_bits))
            elif node.op == "batchnorm2d":
                self._keep(node.name, "error", e)
                self._bn_backward(node, result, e, errors, grads)
            elif node.op == "avg_pool2d":
                x_in, _ = self._input(node, result, 0)
                dx, frac = avg_pool2d_backward(x_in.shape, e.q, e.frac_bits, node.params)
                _add(errors, node.inputs[0], FixedArray(dx, frac))
            elif node.op == "max_pool2d":
                x_in, _ = self._input(node, result, 0)
                _add(errors, node.inputs[0], FixedArray(max_pool2d_backward(x_in, e.q, node.params), e.frac_bits))
            elif node.op == "add":
                for name in node.inputs:
                    _add(errors, name, e)
            elif node.op == "flatten":
                x_in, _ = self._input(node, result, 0)
                _add(errors, node.inputs[0], FixedArray(e.q.reshape(x_in.shape), e.frac_bits))
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
        """The engine forward, BatchNorm with the batch's statistics (training mode)."""
        from ..engine.batchnorm import batch_statistics, batchnorm2d, channel_sums
        from ..graph.ir import RunResult
        from ..graph.ops import OPS
        values = {self.graph.inputs[0].name: (x_q, self.graph.inputs[0].fmt.frac_bits)}
        layers = {}
        for node in self.graph.nodes:
            ins = [values[i] for i in node.inputs]
            if node.op == "batchnorm2d":
                p, info = node.params, self.layers[node.name]
                x_in, f_in = ins[0]
                if p.input_register is not None:
                    x_in = requantize(x_in, f_in, p.input_register, p.rounding, Overflow.SAT_SYM)
                    f_in = p.input_register.frac_bits
                sums = channel_sums(x_in, x_in)
                mean_q, std_q = batch_statistics(x_in, f_in, p.mean_fmt, info["std_register"],
                                                 info["eps_lsbs"], sums=sums)
                self._update_running(info, sums, x_in.size // max(x_in.shape[1], 1), f_in)
                out = batchnorm2d(x_in, f_in, mean_q, std_q, node.arrays.get("gamma"),
                                  node.arrays.get("beta"),
                                  dataclasses.replace(p, input_register=None), trace=True)
                out.trace.update(input=x_in, mean=mean_q, std=std_q, input_frac=f_in)
            else:
                out = OPS[node.op][1](node, ins, True)
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
            if node.op == "batchnorm2d":
                p, info = node.params, self.layers[node.name]
                mean = quantize(info["running_mean"], p.mean_fmt, Rounding.HALF_EVEN, Overflow.SAT_SYM)
                std = quantize(np.sqrt(info["running_var"]), info["std_register"], Rounding.HALF_EVEN,
                               Overflow.SAT_SYM) + info["eps_lsbs"]
                for name, q in (("mean", mean), ("std", std)):
                    q.flags.writeable = False
                    node.arrays[name] = q
        return self.graph.run(x)

    def _bn_backward(self, node, result, e, errors, grads):
        p, info, out = node.params, self.layers[node.name], result.layers[node.name]
        t = out.trace
        gamma = FixedArray(node.arrays["gamma"], p.gamma_fmt.frac_bits) if p.gamma_fmt else None
        with self._timer("BatchNorm backward"):
            dx, d_gamma, d_beta = batchnorm2d_backward(
                FixedArray(t["input"], t["input_frac"]), e, FixedArray(t["mean"], p.mean_fmt.frac_bits),
                FixedArray(t["std"], p.std_fmt.frac_bits), FixedArray(t["xhat"], p.xhat_fmt.frac_bits),
                gamma)
            _add(errors, node.inputs[0], dx)
        for role, grad in (("gamma", d_gamma), ("beta", d_beta)):
            if (node.name, role) in self.master:
                self._keep(node.name, f"{role}_grad_raw", grad)
                with self._timer("G/G_BN"):
                    grads[(node.name, role)] = gbn_quantize(grad, info["grad_bn_k"])

    def _input(self, node, result, i):
        name = node.inputs[i]
        if name == self.graph.inputs[0].name:
            return self._x_q, self.graph.inputs[0].fmt.frac_bits
        out = result.layers[name]
        return out.q, out.fmt.frac_bits

    def _mac_backward(self, node, out, e, errors, grads):
        info = self.layers[node.name]
        x_in = out.trace["input"]
        p = node.params
        x_frac = p.input_register.frac_bits if p.input_register else None
        if x_frac is None:
            x_frac = (self.graph.inputs[0].fmt.frac_bits if node.inputs[0] == self.graph.inputs[0].name
                      else self._frac_of(node.inputs[0]))
        has_bias = "bias" in node.arrays
        with self._timer("MAC backward"):
            if node.op == "linear":
                dx, dw, db = linear_backward(x_in, node.arrays["weight"], e.q, has_bias)
                dx_frac, dw_frac = p.weight_fmt.frac_bits, x_frac
            elif node.op == "adder2d":  # AdderNet's gradients, both on the common grid 2**-H
                dx, dw, db, dx_frac = adder2d_backward(x_in, x_frac, node.arrays["weight"],
                                                       p.weight_fmt.frac_bits, e.q, p, has_bias)
                dw_frac = dx_frac
            else:
                dx, dw, db = conv2d_backward(x_in, node.arrays["weight"], e.q, p, has_bias)
                dx_frac, dw_frac = p.weight_fmt.frac_bits, x_frac
            if node.inputs[0] != self.graph.inputs[0].name:
                _add(errors, node.inputs[0], FixedArray(dx, e.frac_bits + dx_frac))
        for role, grad, frac in (("weight", dw, dw_frac + e.frac_bits), ("bias", db, e.frac_bits)):
            if grad is None:
                continue
            raw = FixedArray(grad, frac)
            if role == "weight" and info.get("decay_shift") is not None:  # before G, exactly
                w = self.master[(node.name, "weight")]
                raw = aligned_sum(raw, FixedArray(w.q, w.frac_bits + info["decay_shift"]))
            self._keep(node.name, f"{role}_grad_raw", raw)
            with self._timer("G/G_BN"):
                u = random_u32(info[f"{role}_key"], self.step_number, grad.size).reshape(grad.shape)
                grads[(node.name, role)] = g_quantize(raw, u, info["grad_range_k"], info["grad_k"])

    def _frac_of(self, name):
        return self._nodes[name].out_fmt.frac_bits
