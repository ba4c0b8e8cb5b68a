"""Training-step vector bundles: one integer training step's errors, gradients (before and
after G / G_BN), master weights and momenta (before and after the update), through the same
manifest as the forward bundles, and their verification: G, G_BN and the update recomputed
from the bundle alone (the random words from the recorded keys and stream)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fixedpoint.format import FixedArray, Format
from ..fixedpoint.random_bits import random_u32
from ..scheme.quantizers import g_quantize, gbn_quantize
from ..training.update import UpdateParams, momentum_update
from .._files import refuse_existing
from .bundle import FILE_KINDS, BundleWriter

PARAMS = ("weight", "bias", "gamma", "beta")


def write_training_bundle(trainer, x, labels, out_dir, layout: str = "NCHW", lanes: int = 1,
                          kinds=FILE_KINDS, force: bool = False, seed: int | None = None,
                          command: str | None = None, word_width: int | None = None) -> Path:
    """Run one ``trainer.step(x, labels)`` (it advances the trainer) and write its tensors."""
    writer = BundleWriter(layout, lanes, kinds, word_width)
    out_dir = refuse_existing(out_dir, force)
    step = trainer.step_number
    record: dict = {}
    trainer.step(x, labels, record=record)
    layers = []
    for node in trainer.graph.nodes:
        roles = {}
        for (layer, role), value in sorted(record.items()):
            if layer == node.name:
                roles[role] = writer.add(f"{layer}/{role}", role, layer, value.q,
                                         Format(None, value.frac_bits))
        if not roles:
            continue
        info = trainer.layers.get(node.name, {})
        layers.append({"name": node.name, "op": node.op, "source": node.source, "tensors": roles,
                       "grad": {k: info[k] for k in ("grad_k", "grad_range_k", "grad_bn_k", "decay_shift",
                                                     "weight_key", "bias_key") if k in info}})
    training = {"step": step, "lr": {"q": int(trainer.lr.q), "frac_bits": trainer.lr.frac_bits},
                "update": {k: getattr(trainer.update, k) for k in
                           ("momentum_shift", "acc_k", "weight_k", "acc_bits", "weight_bits", "order")},
                "layers": layers}
    return writer.write(out_dir, force, seed=seed, command=command, layers=[], outputs=[],
                        input_format=trainer.graph.inputs[0].fmt.to_dict(), training=training)


def verify_training(root, manifest: dict, values: dict) -> list:
    """Failures (strings) of G / G_BN and the update, recomputed from the bundle."""
    training = manifest["training"]
    tensors = manifest["tensors"]
    update = UpdateParams(**training["update"])
    lr = FixedArray(np.array(training["lr"]["q"]), training["lr"]["frac_bits"])
    failures = []

    def fixed(tid):
        return FixedArray(values[tid], tensors[tid]["format"]["frac_bits"])

    for layer in training["layers"]:
        roles, grad = layer["tensors"], layer["grad"]
        for p in PARAMS:
            if f"{p}_grad" not in roles:
                continue
            raw = fixed(roles[f"{p}_grad_raw"])
            if p in ("gamma", "beta"):
                g = gbn_quantize(raw, grad["grad_bn_k"])
            else:
                key = grad["weight_key" if p == "weight" else "bias_key"]
                u = random_u32(key, training["step"], raw.q.size).reshape(raw.q.shape)
                g = g_quantize(raw, u, grad["grad_range_k"], grad["grad_k"])
            want = fixed(roles[f"{p}_grad"])
            if g.frac_bits != want.frac_bits or not np.array_equal(g.q, want.q):
                failures.append(f"{layer['name']}/{p}_grad: recomputed G differs from the bundle")
                continue
            w, acc = momentum_update(fixed(roles[f"{p}_master_before"]), fixed(roles[f"{p}_momentum_before"]),
                                     want, lr, update)
            for name, got in (("master", w), ("momentum", acc)):
                after = fixed(roles[f"{p}_{name}_after"])
                if got.frac_bits != after.frac_bits or not np.array_equal(got.q, after.q):
                    failures.append(f"{layer['name']}/{p}_{name}_after: recomputed update differs")
    return failures
