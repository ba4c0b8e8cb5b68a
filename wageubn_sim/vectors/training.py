"""Training-step vector bundles: one integer training step's errors, gradients (before and
after G / G_BN), master weights and momenta (before and after the update), through the same
manifest as the forward bundles, and their verification: G, G_BN and the update recomputed
from the bundle alone (the random words from the recorded keys and stream)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files.write import refuse_existing
from ..fixedpoint.format import FixedArray, Format
from ..fixedpoint.random_bits import random_u32
from ..scheme.quantizers import g_quantize, gbn_quantize
from ..scheme.update import UpdateParams, momentum_update
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


PARAM_TENSORS = ("grad_raw", "grad", "master_before", "master_after", "momentum_before", "momentum_after")


def verify_training(manifest: dict, values: dict) -> tuple[list, int]:
    """(failures, layers recomputed): G / G_BN and the update recomputed from a training
    bundle's tensors (``values``: tensor id -> int64 array, the ones that could be read)."""
    training = manifest["training"]
    tensors = manifest["tensors"]
    failures, recomputed = [], 0
    try:
        update = UpdateParams(**training["update"])
        lr = FixedArray(np.array(training["lr"]["q"]), training["lr"]["frac_bits"])
    except (TypeError, ValueError) as err:
        return [f"training: the update parameters or lr are malformed: {err}"], 0

    def fixed(tid):
        return FixedArray(values[tid], tensors[tid]["format"]["frac_bits"])

    for layer in training["layers"]:
        roles, grad, name = layer["tensors"], layer["grad"], layer["name"]
        params = [p for p in PARAMS if any(r.startswith(f"{p}_") for r in roles)]
        known = {"error"} | {f"{p}_{t}" for p in params for t in PARAM_TENSORS}
        if set(roles) - known:
            failures.append(f"training layer {name}: unknown tensors {sorted(set(roles) - known)}")
        if not params:
            failures.append(f"training layer {name}: no parameter of it is recomputed")
        for p in params:
            need = [f"{p}_{t}" for t in PARAM_TENSORS]
            if any(r not in roles for r in need):
                failures.append(f"training layer {name}: {p} needs {need}; the bundle lacks "
                                f"{[r for r in need if r not in roles]}")
                continue
            if any(roles[r] not in values for r in need):
                failures.append(f"training layer {name}: {p} not recomputed, a tensor of it cannot be read")
                continue
            try:
                raw = fixed(roles[f"{p}_grad_raw"])
                if p in ("gamma", "beta"):
                    g = gbn_quantize(raw, grad["grad_bn_k"])
                else:
                    key = grad["weight_key" if p == "weight" else "bias_key"]
                    u = random_u32(key, training["step"], raw.q.size).reshape(raw.q.shape)
                    g = g_quantize(raw, u, grad["grad_range_k"], grad["grad_k"])
            except (KeyError, TypeError, ValueError, OverflowError) as err:
                failures.append(f"training layer {name}: {p}: G cannot be recomputed ({err!r})")
                continue
            recomputed += 1
            want = fixed(roles[f"{p}_grad"])
            if g.frac_bits != want.frac_bits or not np.array_equal(g.q, want.q):
                failures.append(f"{name}/{p}_grad: recomputed G differs from the bundle")
                continue
            try:
                w, acc = momentum_update(fixed(roles[f"{p}_master_before"]),
                                         fixed(roles[f"{p}_momentum_before"]), want, lr, update)
            except (ValueError, OverflowError) as err:
                failures.append(f"training layer {name}: {p}: the update cannot be recomputed ({err})")
                continue
            for kind, got in (("master", w), ("momentum", acc)):
                after = fixed(roles[f"{p}_{kind}_after"])
                if got.frac_bits != after.frac_bits or not np.array_equal(got.q, after.q):
                    failures.append(f"{name}/{p}_{kind}_after: recomputed update differs")
    return failures, recomputed
