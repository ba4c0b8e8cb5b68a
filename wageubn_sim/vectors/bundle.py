"""Test-vector bundles: every layer's tensors as memory images and .npy, and a manifest (schema
version 2) that says how each was made, how to recompute it and how each file is laid out.

Layout of a bundle::

    manifest.json                       (schema: wageubn_sim/vectors/manifest.schema.json)
    input.<ext>                         the network input
    <folder>/<role>.<ext>               a layer's tensors; <folder> = file_safe(layer name)
    tb_data/tb_input_features.dat ...   peer layouts (hls4ml, ONNX), on request

File kinds (``--formats``): ``mem`` ($readmemh data only: loads in Vivado synthesis), ``hex``
(Intel HEX, as Quartus reads it), ``coe`` (Xilinx), ``mif`` (Intel), ``npy``; and the
bundle-level peer layouts ``hls4ml`` and ``onnx``. Tensor roles: ``input`` (the network input),
and per layer ``weight``, ``bias``, ``mean``, ``std``, ``gamma``, ``beta``, ``multiplier``,
``offset`` (a folded BatchNorm's), ``accumulator`` (MAC layers) and ``output``. A layer's
inputs are the ``output`` tensors of the layers before it (or ``input``). Same inputs, same
bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np

from ..engine.registry import OPS
from ..execution.run import node_events
from ..files.write import refuse_existing, write_folder_atomically
from ..fixedpoint.arrays import needed_bits
from ..fixedpoint.format import Format
from ..graph.ir import Graph
from ..graph.params import params_to_json
from ..version import __version__
from .formats import HEX_ADDRESSING, IMAGE_KINDS, memory_crc32, pack_words
from .manifest import MANIFEST, MANIFEST_VERSION
from .peers import hls4ml_dat, onnx_tensor
LAYOUTS = ("NCHW", "NHWC")
FILE_KINDS = ("mem", "hex", "coe", "mif", "npy")
DEFAULT_KINDS = ("mem", "coe", "mif", "npy")
PEER_KINDS = ("hls4ml", "onnx")
CRC32_RULE = ("IEEE 802.3 CRC-32 (zlib.crc32) of the memory image: memory_depth words (the "
              "tensor's, then fill), each in ceil(word_width / 8) bytes, least significant byte "
              "first, in address order")
PACKING = "lane 0 in the least significant bits; two's complement"
MAX_FOLDER_NAME = 255  # bytes in one path component (NAME_MAX on Linux and macOS)
# What a memory image may be: words of at most MAX_WORD_WIDTH bits, at most MAX_MEMORY_WORDS
# of them, at most MAX_IMAGE_BYTES as a byte dump. Writer and verifier hold the same bounds, so
# a manifest that declares more is refused before anything of that size is made.
MAX_WORD_WIDTH = 1 << 14
MAX_MEMORY_WORDS = 1 << 27
MAX_IMAGE_BYTES = 1 << 30


def to_layout(q: np.ndarray, layout: str) -> np.ndarray:
    """NCHW (or OIHW) -> the chosen layout; tensors of other ranks are unchanged."""
    if layout == "NHWC" and q.ndim == 4:
        return np.ascontiguousarray(q.transpose(0, 2, 3, 1))
    return q


def from_layout(q: np.ndarray, layout: str) -> np.ndarray:
    if layout == "NHWC" and q.ndim == 4:
        return np.ascontiguousarray(q.transpose(0, 3, 1, 2))
    return q


_FILE_SAFE = re.compile(r"[A-Za-z0-9_.-]")


def file_safe(name: str) -> str:
    """A layer's name as a folder name, one to one: letters, digits, '_', '.' and '-' stay
    (so a torch module path such as layer1.0.conv1 is its own folder name), and every other
    character, '~' included, becomes '~' and the two hex digits of each of its UTF-8 bytes; a
    leading '.' becomes ~2e too (no hidden folders, no '.' or '..')."""
    out = []
    for i, ch in enumerate(name):
        if _FILE_SAFE.fullmatch(ch) and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.append("".join(f"~{b:02x}" for b in ch.encode("utf-8")))
    return "".join(out) or "~"


def tensor_stem(layer: str, role: str, version: int = MANIFEST_VERSION) -> str:
    """Where a tensor's files lie, without their extension: ``<folder>/<role>`` for a layer's
    tensor (the folder ``file_safe(layer)``; version 1 used the layer's name as it was),
    ``input`` for the network's input. The place is part of the bundle's contract: `verify`
    refuses a file found anywhere else."""
    if not layer:
        return role
    return f"{file_safe(layer) if version > 1 else layer}/{role}"


def tensor_file_path(layer: str, role: str, kind: str, version: int = MANIFEST_VERSION) -> str:
    ext = ".npy" if kind == "npy" else IMAGE_KINDS[kind][0]
    return tensor_stem(layer, role, version) + ext


def peer_file_path(kind: str, index: int) -> str:
    """A peer layout's file of the network's input (``index`` 0) or output (1)."""
    if kind == "hls4ml":
        return f"tb_data/{('tb_input_features', 'tb_output_predictions')[index]}.dat"
    return f"test_data_set_0/{('input', 'output')[index]}_0.pb"


def check_folder_name(layer: str) -> None:
    """A layer's folder must be a name file systems take (at most NAME_MAX, 255 bytes)."""
    folder = file_safe(layer)
    if len(folder.encode()) > MAX_FOLDER_NAME:
        raise ValueError(f"layer {layer[:40]!r}... ({len(layer)} characters): its bundle folder "
                         f"name would be {len(folder.encode())} bytes, more than the "
                         f"{MAX_FOLDER_NAME} a file system allows; rename the layer (its module "
                         "or ONNX node) to something shorter")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_bounds_problem(word_width: int, memory_depth: int) -> str | None:
    """What is wrong with a memory image of ``memory_depth`` words of ``word_width`` bits, or None
    when it lies within the bounds every bundle keeps."""
    if word_width > MAX_WORD_WIDTH:
        return f"word_width {word_width} is wider than the {MAX_WORD_WIDTH} bits a memory word may have"
    if memory_depth > MAX_MEMORY_WORDS:
        return f"memory_depth {memory_depth} is more than the {MAX_MEMORY_WORDS} words a memory image may have"
    size = memory_depth * -(-word_width // 8)
    if size > MAX_IMAGE_BYTES:
        return f"{memory_depth} words of {word_width} bits make {size} bytes, more than {MAX_IMAGE_BYTES}"
    return None


def _npy_bytes(q: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, q.astype(np.int64), allow_pickle=False)
    return buf.getvalue()


def _positive_int(name, value, minimum):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name}={value!r}: give an int of at least {minimum}")


class BundleWriter:
    """Collects tensors as memory images and .npy files, and writes them with a manifest.

    ``depth``: every memory image gets exactly this many words (the tensor's, then ``fill``); a
    tensor with more words is refused. Without it an image holds the tensor's words (at least
    one: an empty tensor's image holds one fill word, since no vendor format allows none).
    """

    def __init__(self, layout: str = "NCHW", lanes: int = 1, kinds=DEFAULT_KINDS,
                 word_width: int | None = None, depth: int | None = None, fill: int = 0,
                 hex_addressing: str = "word"):
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}: choose one of {LAYOUTS}")
        _positive_int("lanes", lanes, 1)
        _positive_int("word_width", word_width, 2)
        _positive_int("depth", depth, 1)
        _positive_int("fill", fill, 0)
        if word_width is not None and word_width > MAX_WORD_WIDTH:
            raise ValueError(f"word_width (--word-width) {word_width}: a memory word has at most "
                             f"{MAX_WORD_WIDTH} bits")
        if depth is not None and depth > MAX_MEMORY_WORDS:
            raise ValueError(f"depth (--depth) {depth}: a memory image has at most {MAX_MEMORY_WORDS} words")
        if hex_addressing not in HEX_ADDRESSING:
            raise ValueError(f"hex addressing {hex_addressing!r}: choose one of {HEX_ADDRESSING}")
        kinds = tuple(kinds)
        unknown = set(kinds) - set(FILE_KINDS) - set(PEER_KINDS)
        if unknown or not set(kinds) & set(FILE_KINDS) or len(set(kinds)) != len(kinds):
            raise ValueError(f"file kinds {sorted(unknown) or list(kinds)}: choose one or more of "
                             f"{FILE_KINDS}, and optionally {PEER_KINDS}, each once")
        self.layout, self.lanes, self.word_width = layout, lanes, word_width
        self.kinds = tuple(k for k in kinds if k in FILE_KINDS)
        self.peer_kinds = tuple(k for k in kinds if k in PEER_KINDS)
        self.depth, self.fill, self.hex_addressing = depth, fill, hex_addressing
        self.tensors: dict = {}
        self.files: dict = {}  # relative path -> bytes
        self.folders: set = set()
        self.peer_files: list = []

    def _put(self, rel: str, data: bytes) -> None:
        parents = ["/".join(rel.split("/")[:i]) for i in range(1, rel.count("/") + 1)]
        if rel in self.files or rel in self.folders or any(p in self.files for p in parents):
            raise ValueError(f"two files of the bundle would be at {rel}; rename a layer")
        self.files[rel] = data
        self.folders.update(parents)

    def add(self, tid: str, role: str, layer: str, q, fmt: Format) -> str:
        q = np.asarray(q, dtype=np.int64)
        lanes = self.lanes
        width = fmt.bits if fmt.bits is not None else needed_bits(q)
        word = lanes * width if self.word_width is None else self.word_width
        if word < lanes * width:
            raise ValueError(f"tensor {tid}: {lanes} lanes of {width} bits need {lanes * width}-bit "
                             f"words, more than word_width={self.word_width}; raise it or use fewer lanes")
        depth = -(-q.size // lanes)
        memory_depth = self.depth if self.depth is not None else max(depth, 1)
        if depth > memory_depth:
            raise ValueError(f"tensor {tid}: {depth} words do not fit a memory of depth "
                             f"{self.depth}; raise --depth or use more lanes")
        problem = image_bounds_problem(word, memory_depth)
        if problem:
            raise ValueError(f"tensor {tid}: {problem}; use fewer lanes, a narrower --word-width, "
                             "a smaller --depth or a smaller batch")
        if self.fill >> word:
            raise ValueError(f"fill {self.fill:#x} is wider than tensor {tid}'s {word}-bit words")
        if layer:
            check_folder_name(layer)
        stored = to_layout(q, self.layout)
        signed = fmt.signed or not fmt.bounded  # an observed width is two's complement
        words = pack_words(stored, width, lanes, signed)
        image = words + [self.fill] * (memory_depth - depth)
        entry = {"role": role, "layer": layer, "shape": list(q.shape),
                 "layout": self.layout if q.ndim == 4 else "plain",
                 "format": fmt.to_dict(), "width": width, "width_source": "format" if fmt.bits else "observed",
                 "signed": signed, "lanes": lanes, "word_width": word, "depth": depth,
                 "memory_depth": memory_depth, "crc32": memory_crc32(words, word, self.fill, memory_depth),
                 "files": []}
        header = {"tensor": tid, "shape": "x".join(map(str, q.shape)) or "scalar", "layout": entry["layout"],
                  "width": width, "lanes": lanes, "format": fmt.describe(), "tool": f"wageubn-sim {__version__}"}
        for kind in self.kinds:
            rel = tensor_file_path(layer, role, kind)
            if kind == "npy":
                data = _npy_bytes(stored)
            else:
                data = IMAGE_KINDS[kind][1](image, word, header, self.hex_addressing).encode()
            self._put(rel, data)
            entry["files"].append({"kind": kind, "path": rel, "sha256": sha256(data)})
        self.tensors[tid] = entry
        return tid

    def add_peer_layouts(self, input_tid: str, x_q: np.ndarray, x_fmt: Format, input_name: str,
                         output_tid: str, y_q: np.ndarray, y_fmt: Format, output_name: str) -> None:
        """The network's input and output as hls4ml's tb_data and ONNX backend-test files."""
        for kind in self.peer_kinds:
            for tid, q, fmt, name, index in ((input_tid, x_q, x_fmt, input_name, 0),
                                             (output_tid, y_q, y_fmt, output_name, 1)):
                rel = peer_file_path(kind, index)
                if kind == "hls4ml":
                    data = hls4ml_dat(to_layout(q, self.layout), fmt)
                    layout = self.layout if q.ndim == 4 else "plain"
                else:
                    data = onnx_tensor(q, fmt, name)
                    layout = "NCHW" if q.ndim == 4 else "plain"
                self._put(rel, data)
                self.peer_files.append({"kind": kind, "path": rel, "sha256": sha256(data), "tensor": tid,
                                        "layout": layout, "name": name})

    def write(self, out_dir, force: bool, **manifest_fields) -> Path:
        manifest = {
            "schema": "wageubn-sim-vectors", "version": MANIFEST_VERSION,
            "tool": {"name": "wageubn-sim", "version": __version__},
            "options": {"layout": self.layout, "lanes": self.lanes, "kinds": list(self.kinds),
                        "peer_kinds": list(self.peer_kinds), "packing": PACKING,
                        "depth": self.depth, "fill": self.fill, "hex_addressing": self.hex_addressing,
                        "crc32": CRC32_RULE},
            **manifest_fields, "tensors": self.tensors, "peer_files": self.peer_files,
        }
        files = dict(self.files)
        files[MANIFEST] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
        return write_folder_atomically(out_dir, files, force)


def write_bundle(graph: Graph, x, out_dir, layout: str = "NCHW", lanes: int = 1,
                 kinds=DEFAULT_KINDS, force: bool = False, seed: int | None = None,
                 command: str | None = None, progress=None, word_width: int | None = None,
                 depth: int | None = None, fill: int = 0, hex_addressing: str = "word") -> Path:
    """Run ``graph`` on ``x`` and write the bundle into ``out_dir`` (atomically).

    ``word_width``: the width of every memory word (default: lanes * the tensor's width); a
    wider word is padded with zero bits above the last lane. ``depth``, ``fill``: pad every
    memory image to ``depth`` words with ``fill``. ``hex_addressing``: Intel HEX record
    addresses count ``word``s (Quartus) or ``byte``s (standard Intel HEX).
    """
    writer = BundleWriter(layout, lanes, kinds, word_width, depth, fill, hex_addressing)
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
        for role, fmt in OPS[node.op].arrays(node.params).items():
            roles[role] = writer.add(f"{node.name}/{role}", role, node.name, node.arrays[role], fmt)
        if out.acc_fmt is not None:
            roles["accumulator"] = writer.add(f"{node.name}/accumulator", "accumulator", node.name,
                                              out.trace["accumulator"], out.acc_fmt)
        roles["output"] = writer.add(f"{node.name}/output", "output", node.name, out.q, out.fmt)
        produced[node.name] = roles["output"]
        layers.append({"name": node.name, "folder": file_safe(node.name), "op": node.op,
                       "source": node.source, "params": params_to_json(node.params), "tensors": roles,
                       "events": out.events.counts(),
                       "register_events": {r: e.counts() for r, e in node_events(out).items()}})
    final = graph.outputs[0]
    writer.add_peer_layouts("input", x_q, spec.fmt, spec.name, produced[final], result.q, result.fmt, final)
    return writer.write(out_dir, force, seed=seed, command=command, input_format=spec.fmt.to_dict(),
                        outputs=[produced[o] for o in graph.outputs], layers=layers)
