"""Test-vector bundles: every layer's tensors as $readmemh / .coe / .mif / .npy, and a manifest
that says how each was made and how to recompute it.

Layout of a bundle::

    manifest.json                   (schema: wageubn_sim/vectors/manifest.schema.json)
    <layer>/<role>.hex|.coe|.mif|.npy

Tensor roles: ``input`` (the network input), and per layer ``weight``, ``bias``, ``mean``,
``std``, ``gamma``, ``beta``, ``accumulator`` (MAC layers) and ``output``. A layer's inputs are
the ``output`` tensors of the layers before it (or ``input``). Same inputs, same bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from .. import __version__
from ..files.write import refuse_existing, write_folder_atomically
from ..fixedpoint.format import Format
from ..graph.ir import Graph
from ..graph.ops import array_formats, params_to_json
from .formats import WRITERS, pack_words

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
LAYOUTS = ("NCHW", "NHWC")
FILE_KINDS = ("readmemh", "coe", "mif", "npy")
PARAM_ROLES = ("weight", "bias", "mean", "std", "gamma", "beta", "multiplier", "offset")


def to_layout(q: np.ndarray, layout: str) -> np.ndarray:
    """NCHW (or OIHW) -> the chosen layout; tensors of other ranks are unchanged."""
    if layout == "NHWC" and q.ndim == 4:
        return np.ascontiguousarray(q.transpose(0, 2, 3, 1))
    return q


def from_layout(q: np.ndarray, layout: str) -> np.ndarray:
    if layout == "NHWC" and q.ndim == 4:
        return np.ascontiguousarray(q.transpose(0, 3, 1, 2))
    return q


def needed_bits(q: np.ndarray) -> int:
    """The smallest two's complement width holding every value (at least 2)."""
    if q.size == 0:
        return 2
    lo, hi = int(q.min()), int(q.max())
    return max(2, (max(hi, -lo - 1)).bit_length() + 1)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(q: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, q.astype(np.int64), allow_pickle=False)
    return buf.getvalue()


class BundleWriter:
    """Collects tensors as memory images and .npy files, and writes them with a manifest."""

    def __init__(self, layout: str = "NCHW", lanes: int = 1, kinds=FILE_KINDS,
                 word_width: int | None = None):
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}: choose one of {LAYOUTS}")
        if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes={lanes!r}: the number of values per word is a positive int")
        if word_width is not None and (isinstance(word_width, bool) or not isinstance(word_width, int)
                                       or word_width < 2):
            raise ValueError(f"word_width={word_width!r}: give a width in bits, at least 2")
        kinds = tuple(kinds)
        unknown = set(kinds) - set(FILE_KINDS)
        if unknown or not kinds:
            raise ValueError(f"file kinds {sorted(unknown) or kinds}: choose from {FILE_KINDS}")
        self.layout, self.lanes, self.kinds, self.word_width = layout, lanes, kinds, word_width
        self.tensors: dict = {}
        self.files: dict = {}  # relative path -> bytes

    def add(self, tid: str, role: str, layer: str, q, fmt: Format) -> str:
        q = np.asarray(q, dtype=np.int64)
        lanes = self.lanes
        width = fmt.bits if fmt.bits is not None else needed_bits(q)
        word = lanes * width if self.word_width is None else self.word_width
        if word < lanes * width:
            raise ValueError(f"tensor {tid}: {lanes} lanes of {width} bits need {lanes * width}-bit "
                             f"words, more than word_width={self.word_width}; raise it or use fewer lanes")
        entry = {"role": role, "layer": layer, "shape": list(q.shape),
                 "layout": self.layout if q.ndim == 4 else "plain",
                 "format": fmt.to_dict(), "width": width, "width_source": "format" if fmt.bits else "observed",
                 "signed": True, "lanes": lanes, "word_width": word,
                 "depth": -(-q.size // lanes), "files": []}
        stored = to_layout(q, self.layout)
        words = pack_words(stored, width, lanes)
        stem = f"{layer}/{role}" if layer else role
        header = {"tensor": tid, "shape": "x".join(map(str, q.shape)) or "scalar", "layout": entry["layout"],
                  "width": width, "lanes": lanes, "format": fmt.describe(), "tool": f"wageubn-sim {__version__}"}
        for kind in self.kinds:
            if kind == "npy":
                rel, data = f"{stem}.npy", _npy_bytes(stored)
            else:
                ext, writer = WRITERS[kind]
                rel, data = stem + ext, writer(words, word, header).encode()
            self.files[rel] = data
            entry["files"].append({"kind": kind, "path": rel, "sha256": sha256(data),
                                   "radix": 10 if kind == "npy" else 16})
        self.tensors[tid] = entry
        return tid

    def write(self, out_dir, force: bool, **manifest_fields) -> Path:
        manifest = {
            "schema": "wageubn-sim-vectors", "version": MANIFEST_VERSION,
            "tool": {"name": "wageubn-sim", "version": __version__},
            "options": {"layout": self.layout, "lanes": self.lanes, "kinds": list(self.kinds),
                        "packing": "lane 0 in the least significant bits; two's complement"},
            **manifest_fields, "tensors": self.tensors,
        }
        files = dict(self.files)
        files[MANIFEST] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
        return write_folder_atomically(out_dir, files, force)


def write_bundle(graph: Graph, x, out_dir, layout: str = "NCHW", lanes: int = 1,
                 kinds=FILE_KINDS, force: bool = False, seed: int | None = None,
                 command: str | None = None, progress=None, word_width: int | None = None) -> Path:
    """Run ``graph`` on ``x`` and write the bundle into ``out_dir`` (atomically).

    ``word_width``: the width of every memory word (default: lanes * the tensor's width); a
    wider word is padded with zero bits above the last lane.
    """
    writer = BundleWriter(layout, lanes, kinds, word_width)
    out_dir = refuse_existing(out_dir, force)
    x_q = graph.quantize_input(x)
    result = graph.run(x_q, trace=True)
    layers = []
    spec = graph.inputs[0]
    writer.add("input", "input", "", x_q, spec.fmt)
    produced = {spec.name: "input"}
    nodes = graph.nodes if progress is None else progress(graph.nodes)
    for node in nodes:
        out = result.layers[node.name]
        roles = {"inputs": [produced[i] for i in node.inputs]}
        formats = array_formats(node.op, node.params)
        for role in PARAM_ROLES:
            if role in node.arrays:
                roles[role] = writer.add(f"{node.name}/{role}", role, node.name, node.arrays[role],
                                         formats[role])
        if out.acc_fmt is not None:
            roles["accumulator"] = writer.add(f"{node.name}/accumulator", "accumulator", node.name,
                                              out.trace["accumulator"], out.acc_fmt)
        roles["output"] = writer.add(f"{node.name}/output", "output", node.name, out.q, out.fmt)
        produced[node.name] = roles["output"]
        layers.append({"name": node.name, "op": node.op, "source": node.source,
                       "params": params_to_json(node.params), "tensors": roles,
                       "events": _counts(out.events),
                       "register_events": {r: _counts(e) for r, e in
                                           (out.register_events or {"output": out.events}).items()}})
    return writer.write(out_dir, force, seed=seed, command=command, input_format=spec.fmt.to_dict(),
                        outputs=[produced[o] for o in graph.outputs], layers=layers)


def _counts(events) -> dict:
    return {k: int(v) for k, v in vars(events).items()}
