"""Checking a bundle from its files alone, trusting none of them.

What is checked is decided by the bundle's structure, not by what the manifest chooses to list:

* the manifest is a regular file inside the bundle, and follows the schema;
* every file in the folder is listed, every listed file exists, none is a link, none escapes;
* every file matches its sha256, parses (bounded readers), and holds its tensor's values;
* the network is recomputed layer by layer from the input and the parameters: each layer's
  inputs must be produced by the input or an earlier layer (no gap), its parameter tensors
  must carry the formats its params declare, and each file of its accumulator and output is
  compared with the recomputed values, and the layer's events with the recomputed events;
* the declared outputs are produced by recomputed layers, and every tensor in the bundle is
  the input, a parameter of a listed layer or a value one recomputes (a tensor that belongs to
  no listed layer means a layer was removed);
* a training-step bundle: G, G_BN and the update recomputed for every layer.

Every failure is listed, each blaming the file that differs: a file with a wrong sha256 or a
parse error is blamed alone; a recomputed tensor's files are each compared with the
recomputation (layers recompute from recomputed inputs, so one wrong value blames only its
own files); a declared tensor's files are compared with each other, and the minority blamed.

`BundleError` is for folders that are no bundle this tool reads (a usage error); everything a
bundle can get wrong is a failure in the report.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from ..engine.registry import OPS
from ..execution.run import node_events, run_node
from ..files.read import UnreadableFile, parse_npy, read_regular_file
from ..fixedpoint.format import Format
from ..graph.ir import Node
from ..graph.params import check_structure, params_from_json
from .bundle import (file_safe, from_layout, image_bounds_problem, peer_file_path, tensor_file_path,
                     to_layout)
from .formats import IMAGE_KINDS, ImageError, lane_range, memory_crc32, pack_words, unpack_words
from .manifest import MANIFEST, BundleError, read_manifest
from .peers import read_dat, read_onnx_tensor


@dataclasses.dataclass
class VerifyReport:
    files: int  # files checked (sha256 and contents)
    layers: int  # layers recomputed
    failures: list

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self):
        head = f"{self.files} files and {self.layers} layers checked: "
        return head + ("all match" if self.ok else f"{len(self.failures)} FAILED\n  "
                       + "\n  ".join(self.failures))


def verify_bundle(root, graph=None) -> VerifyReport:
    """Verify the bundle folder ``root``. With ``graph`` (a `Graph`, e.g. the one the bundle was
    written from), the bundle must also be that graph's: the same layers, params, parameter
    values, input format and outputs. Without it, nothing outside the bundle vouches for the
    parameters, so a parameter forged in all its files shows as outputs that differ from
    their recomputation; with it, the parameter's files are blamed."""
    return _Verifier(Path(root), graph).run()


def load_bundle(root) -> tuple[dict, dict]:
    """(manifest, {tensor id: values as NCHW int64}) of a bundle, for testbenches and tools:
    its files are checked as `verify_bundle` checks them (listed, present, sha256, parsed, in
    agreement); any failure raises BundleError naming them. Nothing is recomputed."""
    v = _Verifier(Path(root))
    try:
        v.manifest = v.load_manifest()
        v.tensors = v.manifest["tensors"]
        v.check_files()
        v.consistent = {tid for tid, entry in v.tensors.items() if v.entry_is_consistent(tid, entry)}
        v.values = {tid: v.read_tensor(tid, entry) for tid, entry in v.tensors.items()}
        values = {tid: v.agreed(tid) for tid in v.tensors}
    except _Stop:
        values = {}
    if v.failures:
        raise BundleError(f"{root}: " + "; ".join(v.failures[:10]))
    return v.manifest, values


class _Stop(Exception):
    """The manifest is unusable: the failures found so far are the report."""


class _Verifier:
    def __init__(self, root: Path, graph=None):
        self.root = root
        self.graph = graph
        self.failures: list = []
        self.files_checked = 0
        self.layers_checked = 0
        self.used: set = set()  # tensor ids the structure accounts for
        self.trusted: dict = {}  # tensor id -> values held for true

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def run(self) -> VerifyReport:
        try:
            self.manifest = self.load_manifest()
            self.tensors = self.manifest["tensors"]
            if any(f["kind"] == "onnx" for f in self.manifest.get("peer_files", [])):
                try:
                    import onnx  # noqa: F401
                except ImportError:
                    raise BundleError(f"{self.root} holds ONNX test data; verifying it needs the onnx "
                                      "package: pip install 'wageubn-sim[onnx]'") from None
            self.check_files()
            self.consistent = {tid for tid, entry in self.tensors.items()
                               if self.entry_is_consistent(tid, entry)}
            self.values = {tid: self.read_tensor(tid, entry) for tid, entry in self.tensors.items()}
            if "training" in self.manifest:
                self.check_training()
            else:
                self.check_network()
            self.check_peer_files()
            for tid, entry in sorted(self.tensors.items()):
                if tid not in self.used:
                    self.fail(f"tensor {tid} (role {entry['role']} of layer {entry['layer'] or '-'}) "
                              "belongs to no listed layer: a layer is missing from the manifest")
        except _Stop:
            pass
        return VerifyReport(self.files_checked, self.layers_checked, self.failures)

    # ---- the manifest -------------------------------------------------------------------
    def load_manifest(self) -> dict:
        manifest, failures = read_manifest(self.root)
        self.failures += failures
        if manifest is None:
            raise _Stop
        self.version = manifest["version"]
        return manifest

    # ---- the folder ---------------------------------------------------------------------
    def check_files(self) -> None:
        """Every file listed, every listed file present and unique, no links, no escapes."""
        listed: dict = {}
        self.unsafe: set = set()
        for tid, entry in self.tensors.items():
            for f in entry["files"]:
                rel = f["path"]
                if rel in listed:
                    self.fail(f"{rel} is listed twice (tensors {listed[rel]} and {tid})")
                listed[rel] = tid
                self.check_place(rel, tensor_file_path(entry["layer"], entry["role"], f["kind"],
                                                       self.version), f"its {f['kind']} file of tensor {tid}")
        outputs = self.manifest.get("outputs") or [None]
        for f in self.manifest.get("peer_files", []):
            if f["path"] in listed:
                self.fail(f"{f['path']} is listed twice (tensor {listed[f['path']]} and a peer file)")
            listed[f["path"]] = f["tensor"]
            index = 0 if f["tensor"] == "input" else 1
            if index and f["tensor"] != outputs[0]:
                self.fail(f"{f['path']}: a peer file of tensor {f['tensor']}, which is neither the "
                          f"input nor the declared output {outputs[0]}")
                self.unsafe.add(f["path"])
            self.check_place(f["path"], peer_file_path(f["kind"], index), f"the {f['kind']} file of tensor {f['tensor']}")
        for rel in listed:
            if any(part in ("", ".", "..") for part in rel.split("/")) or rel == MANIFEST:
                self.fail(f"{rel}: a manifest path must name a file inside the bundle, "
                          "without '.', '..' or empty parts (it escapes the bundle folder)")
                self.unsafe.add(rel)
        present = set()
        for folder, dirs, files in os.walk(self.root):
            for name in dirs + files:
                full = Path(folder) / name
                rel = full.relative_to(self.root).as_posix()
                if full.is_symlink():
                    self.fail(f"{rel} is a symbolic link; a bundle holds regular files only")
                elif name in files:
                    present.add(rel)
        for rel in sorted(present - set(listed) - {MANIFEST}):
            self.fail(f"{rel} is not listed in the manifest (an extra file, or its tensor was "
                      "removed from the manifest)")
        self.present = present

    def check_place(self, rel: str, canonical: str, what: str) -> None:
        """A file's place is part of its meaning: the one its tensor and kind give, nowhere else
        (so that a layer's weights cannot be moved into another layer's folder)."""
        if rel != canonical:
            self.fail(f"{rel}: {what} lies at {canonical} in a bundle, not here (files moved "
                      "between layers or kinds?)")
            self.unsafe.add(rel)

    def read_tensor(self, tid: str, entry: dict) -> dict:
        """{file path: values (NCHW int64) or None}; each file's failures are blamed on it."""
        out = {}
        if tid not in self.consistent:
            return {f["path"]: None for f in entry["files"]}
        count = int(np.prod(entry["shape"], dtype=object))
        stored_shape = list(entry["shape"])
        if entry["layout"] == "NHWC":
            n, c, h, w = stored_shape
            stored_shape = [n, h, w, c]
        for f in entry["files"]:
            rel = f["path"]
            out[rel] = None
            if rel in self.unsafe:
                continue
            if rel not in self.present:
                path = self.root / rel
                if not os.path.lexists(path):
                    self.fail(f"{rel} is missing from the bundle")
                elif not path.is_symlink():  # a link was reported where the folder was walked
                    self.fail(f"{rel} is not a regular file")
                continue
            self.files_checked += 1
            try:
                values = self.decode_file(f, entry, count, stored_shape)
            except (UnreadableFile, ImageError, UnicodeDecodeError) as err:
                self.fail(f"{rel}: {err}")
                continue
            if values is None:
                continue
            out[rel] = from_layout(values.reshape(stored_shape), entry["layout"])
        return out

    def memory_depth(self, entry: dict, kind: str) -> int:
        """Words in an image of the tensor (version 1: readmemh the tensor's, others >= 1)."""
        if self.version == 1:
            return entry["depth"] if kind == "readmemh" else max(entry["depth"], 1)
        return entry["memory_depth"]

    def decode_file(self, f: dict, entry: dict, count: int, stored_shape: list):
        rel, kind = f["path"], f["kind"]
        words_depth = self.memory_depth(entry, kind)
        digits = -(-entry["word_width"] // 4)
        limit = (1 << 20) + 8 * count + 4096 if kind == "npy" else (1 << 20) + words_depth * (2 * digits + 40)
        data = read_regular_file(self.root / rel, "file", limit)
        if hashlib.sha256(data).hexdigest() != f["sha256"]:
            self.fail(f"{rel}: sha256 does not match the manifest (edited or corrupted)")
            return None
        if kind == "npy":
            q = parse_npy(data, rel, expect_shape=stored_shape).reshape(-1)
            q = q.astype(np.int64) if q.dtype != np.uint64 else q
        else:
            addressing = self.manifest["options"].get("hex_addressing", "word")
            words = IMAGE_KINDS[kind][2](data.decode("utf-8"), words_depth, entry["word_width"], addressing)
            fill = self.manifest["options"].get("fill", 0)
            if self.version > 1 and any(w != fill for w in words[entry["depth"]:]):
                raise ImageError(f"its words beyond the tensor's {entry['depth']} are not the fill {fill:#x}")
            q = unpack_words(words[:entry["depth"]], entry["width"], entry["lanes"], count,
                             entry["signed"])
        if q.size != count:
            raise ImageError(f"holds {q.size} values, the manifest says {count}")
        lo, hi = lane_range(entry["width"], entry["signed"])
        if q.size and (int(q.min()) < lo or int(q.max()) > hi):
            raise ImageError(f"holds values from {int(q.min())} to {int(q.max())}, wider than its "
                             f"{entry['width']} {'signed' if entry['signed'] else 'unsigned'} bits")
        return q.astype(np.int64)

    def entry_is_consistent(self, tid: str, entry: dict) -> bool:
        """The entry's own fields agree with each other and with the options."""
        problems = []
        fmt = self.format_of(tid, entry)
        if fmt is not None:
            if fmt.bounded and (entry["width"] != fmt.bits or entry["width_source"] != "format"):
                problems.append(f"width {entry['width']} ({entry['width_source']}) for format {fmt.describe()}")
            if not fmt.bounded and entry["width_source"] != "observed":
                problems.append(f"width_source {entry['width_source']} for the unbounded {fmt.describe()}")
            if entry["signed"] != (fmt.signed or not fmt.bounded):
                problems.append(f"signed={entry['signed']} for format {fmt.describe()}")
        count = int(np.prod(entry["shape"], dtype=object))
        bounds = image_bounds_problem(entry["word_width"], entry.get("memory_depth", entry["depth"]))
        if bounds:
            problems.append(bounds)
        if entry["word_width"] < entry["lanes"] * entry["width"]:
            problems.append(f"{entry['lanes']} lanes of {entry['width']} bits in {entry['word_width']}-bit words")
        if entry["depth"] != -(-count // entry["lanes"]):
            problems.append(f"depth {entry['depth']} for {count} values in {entry['lanes']} lanes")
        layout = self.manifest["options"]["layout"] if len(entry["shape"]) == 4 else "plain"
        if entry["layout"] != layout:
            problems.append(f"layout {entry['layout']}, the bundle's is {layout}")
        if entry["lanes"] != self.manifest["options"]["lanes"]:
            problems.append(f"lanes {entry['lanes']}, the bundle's are {self.manifest['options']['lanes']}")
        want_id = "input" if entry["role"] == "input" else f"{entry['layer']}/{entry['role']}"
        if tid != want_id or (entry["role"] == "input") != (entry["layer"] == ""):
            problems.append(f"role {entry['role']} of layer {entry['layer']!r} is named {tid!r}")
        kinds = sorted(f["kind"] for f in entry["files"])
        if kinds != sorted(set(kinds)) or set(kinds) != set(self.manifest["options"]["kinds"]):
            problems.append(f"files of kinds {kinds}, the bundle writes {self.manifest['options']['kinds']}")
        if self.version > 1:
            depth = self.manifest["options"]["depth"]
            want = depth if depth is not None else max(entry["depth"], 1)
            if entry["memory_depth"] != want:
                problems.append(f"memory_depth {entry['memory_depth']}; the options give {want}")
        for problem in problems:
            self.fail(f"tensor {tid}: {problem}")
        return fmt is not None and not problems

    def format_of(self, tid: str, entry: dict) -> Format | None:
        try:
            return Format.from_dict(entry["format"])
        except (ValueError, TypeError) as err:
            self.fail(f"tensor {tid}: format {entry['format']!r}: {err}")
            return None

    def agreed(self, tid: str):
        """A declared tensor's values, from its files by majority; None (and failures) when
        they disagree without one, or none could be read."""
        files = {rel: v for rel, v in self.values[tid].items() if v is not None}
        if not files:
            self.fail(f"tensor {tid}: no file of it can be read")
            return None
        groups: list = []  # [(values, [paths])]
        for rel, v in files.items():
            for values, paths in groups:
                if values.shape == v.shape and np.array_equal(values, v):
                    paths.append(rel)
                    break
            else:
                groups.append((v, [rel]))
        groups.sort(key=lambda g: -len(g[1]))
        if len(groups) > 1 and len(groups[0][1]) == len(groups[1][1]):
            self.fail(f"tensor {tid}: its files disagree ({', '.join(sorted(files))}) and no "
                      "majority tells which is right")
            return None
        for values, paths in groups[1:]:
            for rel in paths:
                self.fail(f"{rel} disagrees with the other files of {tid}")
        self.trust(tid, groups[0][0])
        return groups[0][0]

    def trust(self, tid: str, values: np.ndarray) -> None:
        """Values we hold for true (agreed by the files, recomputed, or the graph's): keep them
        for the peer files, and check the tensor's crc32 against them."""
        self.trusted[tid] = values
        entry = self.tensors[tid]
        if self.version < 2 or values.shape != tuple(entry["shape"]) or tid not in self.consistent:
            return  # an inconsistent entry is blamed already; its sizes are not to be trusted
        try:
            words = pack_words(to_layout(values, entry["layout"]), entry["width"], entry["lanes"],
                               entry["signed"])
        except ValueError:
            return  # values wider than the entry's width: its files are blamed already
        crc = memory_crc32(words, entry["word_width"], self.manifest["options"]["fill"], entry["memory_depth"])
        if crc != entry["crc32"]:
            self.fail(f"tensor {tid}: crc32 {entry['crc32']} in the manifest, its values give {crc}")

    def compare_with(self, tid: str, want: np.ndarray, what: str = "the recomputation") -> None:
        """Each readable file of a tensor against values we trust; each differing file blamed."""
        self.trust(tid, want)
        for rel, got in sorted(self.values[tid].items()):
            if got is None:
                continue
            if got.shape != want.shape:
                self.fail(f"{rel}: shape {list(got.shape)}, {what} has {list(want.shape)}")
            elif not np.array_equal(got, want):
                self.fail(f"{rel}: {int(np.count_nonzero(got != want))} values differ from {what}")

    def graph_node(self, name: str):
        if self.graph is None:
            return None
        return next((n for n in self.graph.nodes if n.name == name), None)

    # ---- the network --------------------------------------------------------------------
    def check_network(self) -> None:
        manifest = self.manifest
        inputs = [tid for tid, e in self.tensors.items() if e["role"] == "input"]
        if len(inputs) != 1:
            self.fail(f"the bundle holds {len(inputs)} input tensors; a network bundle holds one")
            raise _Stop
        tid = inputs[0]
        self.used.add(tid)
        fmt = self.format_of(tid, self.tensors[tid])
        if fmt is not None and fmt.to_dict() != manifest["input_format"]:
            self.fail(f"tensor {tid}: format {fmt.describe()}, the manifest's input_format is "
                      f"{manifest['input_format']}")
        x = self.agreed(tid)
        available = {} if x is None or fmt is None else {tid: (x, fmt.frac_bits)}
        produced_by = {}
        if not manifest["layers"]:
            self.fail("the manifest lists no layers: nothing of the network can be recomputed")
        if self.graph is not None:
            self.check_against_graph(tid, fmt)
        seen = set()
        for layer in manifest["layers"]:
            if layer["name"] in seen:
                self.fail(f"layer {layer['name']} is listed twice; a network computes each layer once")
                continue
            seen.add(layer["name"])
            out_tid = self.check_layer(layer, available)
            if out_tid is not None:
                produced_by[out_tid] = layer["name"]
        last = manifest["layers"][-1]["tensors"].get("output") if manifest["layers"] else None
        if manifest["outputs"] != [last]:
            self.fail(f"the manifest declares outputs {manifest['outputs']}; a network bundle's "
                      f"output is its last layer's ({last})")
        for out in manifest["outputs"]:
            if out not in produced_by:
                self.fail(f"declared output {out} is not produced by any recomputed layer")

    def check_against_graph(self, input_tid: str, input_fmt) -> None:
        """The bundle's structure against the graph's: layers (names and ops, in order), the
        input's format and shape, the outputs. Params and parameter values: `check_layer`."""
        g, manifest = self.graph, self.manifest
        ours = [(layer["name"], layer["op"]) for layer in manifest["layers"]]
        theirs = [(n.name, n.op) for n in g.nodes]
        if ours != theirs:
            gone = [n for n in theirs if n not in ours][:5]
            added = [n for n in ours if n not in theirs][:5]
            self.fail(f"the bundle's layers are not the graph's: missing {gone}, not in the graph "
                      f"{added}" if gone or added else "the bundle's layers are the graph's in another order")
        spec = g.inputs[0]
        if input_fmt is not None and input_fmt != spec.fmt:
            self.fail(f"tensor {input_tid}: format {input_fmt.describe()}, the graph's input is "
                      f"{spec.fmt.describe()}")
        if list(self.tensors[input_tid]["shape"][1:]) != list(spec.shape):
            self.fail(f"tensor {input_tid}: shape {self.tensors[input_tid]['shape']}, the graph's "
                      f"input is (N, {', '.join(map(str, spec.shape))})")
        want = [f"{o}/output" for o in g.outputs]
        if manifest["outputs"] != want:
            self.fail(f"the manifest declares outputs {manifest['outputs']}, the graph's are {want}")

    def check_layer(self, layer: dict, available: dict):
        """Recompute one layer; returns its output tensor id when recomputed."""
        name, op, roles = layer["name"], layer["op"], layer["tensors"]
        where = f"layer {name} ({op})"
        if self.version > 1 and layer["folder"] != file_safe(name):
            self.fail(f"{where}: folder {layer['folder']!r}, the rule gives {file_safe(name)!r}")
        for role, ref in roles.items():
            for tid in (ref if isinstance(ref, list) else [ref]):
                self.used.add(tid)
                if tid not in self.tensors:
                    self.fail(f"{where}: its {role} tensor {tid} is not in the manifest")
                    return None
        try:
            params = params_from_json(op, layer["params"], self.version)
            check_structure(op, params, len(roles.get("inputs", [])))
        except (ValueError, TypeError) as err:
            self.fail(f"{where}: {err}")
            return None
        formats = OPS[op].arrays(params)
        expected = {"inputs", "output"} | set(formats) | ({"accumulator"} if OPS[op].accumulator else set())
        extra, missing = set(roles) - expected, expected - set(roles)
        if extra or missing:
            self.fail(f"{where}: tensors {sorted(roles)}; its op needs {sorted(expected)}")
            return None
        for role in ("output", "accumulator", *formats):
            if role in roles and (self.tensors[roles[role]]["role"], self.tensors[roles[role]]["layer"]) != (role, name):
                self.fail(f"{where}: its {role} is tensor {roles[role]}, which is "
                          f"{self.tensors[roles[role]]['role']} of layer {self.tensors[roles[role]]['layer']!r}")
                return None
        gaps = [t for t in roles["inputs"] if t not in available]
        if gaps:
            self.fail(f"{where} reads {', '.join(gaps)}, which neither the input nor an earlier "
                      "recomputed layer produces")
            return None
        node_of_graph = self.graph_node(name)
        if node_of_graph is not None and node_of_graph.params != params:
            self.fail(f"{where}: its params differ from the graph's")
        arrays = {}
        for role, fmt in formats.items():
            tid = roles[role]
            declared = self.format_of(tid, self.tensors[tid])
            if declared is not None and declared != fmt:
                self.fail(f"tensor {tid}: format {declared.describe()}, the layer's params say "
                          f"{fmt.describe()}")
            if node_of_graph is not None and role in node_of_graph.arrays:
                arrays[role] = node_of_graph.arrays[role]  # the graph vouches for it: blame files
                self.compare_with(tid, arrays[role], f"the graph's {role} of {name}")
                continue
            arrays[role] = self.agreed(tid)
            if arrays[role] is None:
                self.fail(f"{where}: not recomputed, its {role} cannot be read")
                return None
        try:
            node = Node(name, op, list(roles["inputs"]), params, arrays)
            out = run_node(node, [available[t] for t in roles["inputs"]], True)
        except (ValueError, OverflowError) as err:
            self.fail(f"{where}: cannot be recomputed: {err}")
            return None
        self.layers_checked += 1
        checks = [("output", out.q, out.fmt)]
        if "accumulator" in roles:
            checks.append(("accumulator", out.trace["accumulator"], out.acc_fmt))
        for role, values, fmt in checks:
            tid = roles[role]
            self.compare_with(tid, values)
            declared = self.format_of(tid, self.tensors[tid])
            if declared is not None and declared != fmt:
                self.fail(f"tensor {tid}: format {declared.describe()}, the recomputation gives "
                          f"{fmt.describe()}")
        self.compare_events(where, layer, out)
        available[roles["output"]] = (out.q, out.fmt.frac_bits)
        return roles["output"]

    def compare_events(self, where: str, layer: dict, out) -> None:
        got = out.events.counts()
        if layer["events"] != got:
            self.fail(f"{where}: events {layer['events']}, the recomputation counts {got}")
        if "register_events" in layer:
            registers = {r: e.counts() for r, e in node_events(out).items()}
            if layer["register_events"] != registers:
                self.fail(f"{where}: register_events {layer['register_events']}, the "
                          f"recomputation counts {registers}")

    # ---- peer layouts -------------------------------------------------------------------
    def check_peer_files(self) -> None:
        """hls4ml's .dat and ONNX's .pb of the input and outputs: each parsed and compared with
        the tensor's trusted values (the input agreed by its files, an output recomputed)."""
        for f in self.manifest.get("peer_files", []):
            rel, tid = f["path"], f["tensor"]
            self.used.add(tid)
            if rel in self.unsafe or rel not in self.present:
                if rel not in self.unsafe and not os.path.lexists(self.root / rel):
                    self.fail(f"{rel} is missing from the bundle")
                continue
            if tid not in self.tensors or tid not in self.trusted:
                self.fail(f"{rel}: its tensor {tid} is not in the bundle or could not be checked")
                continue
            entry, values = self.tensors[tid], self.trusted[tid]
            fmt = Format.from_dict(entry["format"])
            self.files_checked += 1
            try:
                data = read_regular_file(self.root / rel, "file", (1 << 20) + 48 * values.size)
                if hashlib.sha256(data).hexdigest() != f["sha256"]:
                    self.fail(f"{rel}: sha256 does not match the manifest (edited or corrupted)")
                    continue
                want = values.astype(np.float64) * 2.0 ** -fmt.frac_bits
                got = (read_dat(data, want.shape[0]) if f["kind"] == "hls4ml"
                       else read_onnx_tensor(data, want.shape))
                if f["kind"] == "hls4ml":
                    want = to_layout(want, f["layout"]).reshape(want.shape[0], -1)
                if got.shape != want.shape or not np.array_equal(got, want):
                    self.fail(f"{rel}: its values differ from tensor {tid}'s")
            except (UnreadableFile, ImageError, ValueError) as err:
                self.fail(f"{rel}: {err}")

    # ---- training-step bundles ----------------------------------------------------------
    def check_training(self) -> None:
        from .training import verify_training
        layers = self.manifest["training"]["layers"]
        if not layers:
            self.fail("the training section lists no layers: nothing can be recomputed")
        for layer in layers:
            self.used.update(layer["tensors"].values())
        values = {}
        for tid in self.used & set(self.tensors):
            v = self.agreed(tid)
            if v is not None:
                values[tid] = v
        failures, recomputed = verify_training(self.manifest, values)
        self.failures += failures
        self.layers_checked += recomputed
