"""Checking a bundle from its manifest and files alone: the schema, every sha256, every memory
image against its .npy, and every layer recomputed by the engine from its input and parameter
tensors. Nothing from the run that wrote the bundle is used."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np

from ..fixedpoint.format import Format
from ..graph.ir import Node
from ..graph.ops import OPS, params_from_json
from .bundle import MANIFEST, MANIFEST_VERSION, PARAM_ROLES, from_layout
from .formats import READERS, unpack_words

SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")


class BundleError(ValueError):
    """The bundle is malformed, tampered with or incomplete."""


@dataclasses.dataclass
class VerifyReport:
    files: int
    layers: int
    failures: list

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self):
        head = f"{self.files} files and {self.layers} layers checked: "
        return head + ("all match" if self.ok else f"{len(self.failures)} FAILED\n  "
                       + "\n  ".join(self.failures))


def load_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root} has no {MANIFEST}; is it a wageubn-sim vector bundle?")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{path} is not valid JSON: {err}") from None
    import jsonschema
    try:
        jsonschema.validate(manifest, json.loads(SCHEMA_PATH.read_text()))
    except jsonschema.ValidationError as err:
        raise BundleError(f"{path} does not follow the manifest schema: {err.message} "
                          f"(at {'/'.join(map(str, err.absolute_path))})") from None
    if manifest["version"] != MANIFEST_VERSION:
        raise BundleError(f"manifest version {manifest['version']}; this tool reads {MANIFEST_VERSION}")
    return manifest


def _safe_path(root: Path, rel: str) -> Path:
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise BundleError(f"manifest path {rel!r} escapes the bundle folder")
    return path


def read_tensor(root: Path, entry: dict, failures: list | None = None) -> np.ndarray:
    """The tensor as NCHW int64, from its .npy (or, without one, its first memory image);
    every file of the entry is checked against its sha256 and against the others."""
    values, count = None, int(np.prod(entry["shape"], dtype=np.int64))
    for f in entry["files"]:
        path = _safe_path(root, f["path"])
        if not path.is_file():
            raise BundleError(f"{f['path']} is missing from the bundle")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != f["sha256"]:
            raise BundleError(f"{f['path']}: sha256 does not match the manifest (edited or corrupted)")
        if f["kind"] == "npy":
            q = np.load(io.BytesIO(data), allow_pickle=False).reshape(-1)
        else:
            words = READERS[f["kind"]](data.decode())
            q = unpack_words(words, entry["width"], entry["lanes"], count)
        if q.size != count:
            raise BundleError(f"{f['path']} holds {q.size} values, the manifest says {count}")
        if values is None:
            values = q
        elif not np.array_equal(values, q) and failures is not None:
            failures.append(f"{f['path']} disagrees with the other files of {entry['role']}")
    stored_shape = entry["shape"]
    if entry["layout"] == "NHWC":
        n, c, h, w = stored_shape
        stored_shape = [n, h, w, c]
    return from_layout(values.astype(np.int64).reshape(stored_shape), entry["layout"])


def verify_bundle(root) -> VerifyReport:
    root = Path(root)
    manifest = load_manifest(root)
    tensors = manifest["tensors"]
    failures: list = []
    cache = {tid: read_tensor(root, entry, failures) for tid, entry in tensors.items()}
    n_files = sum(len(e["files"]) for e in tensors.values())
    for layer in manifest["layers"]:
        roles = layer["tensors"]
        arrays = {r: cache[roles[r]] for r in PARAM_ROLES if r in roles}
        node = Node(layer["name"], layer["op"], roles["inputs"], params_from_json(layer["op"], layer["params"]),
                    arrays)
        ins = [(cache[t], Format.from_dict(tensors[t]["format"]).frac_bits) for t in roles["inputs"]]
        try:
            out = OPS[layer["op"]][1](node, ins, True)
        except (ValueError, OverflowError) as err:
            failures.append(f"{layer['name']}: cannot be recomputed: {err}")
            continue
        checks = [("output", out.q)]
        if "accumulator" in roles:
            checks.append(("accumulator", out.trace.get("accumulator")))
        for role, got in checks:
            want = cache[roles[role]]
            if got is None or got.shape != want.shape or not np.array_equal(got, want):
                bad = "shape" if got is None or got.shape != want.shape else \
                    f"{int(np.count_nonzero(got != want))} values"
                failures.append(f"{layer['name']}/{role}: recomputed {bad} differ from the bundle")
        fmt = Format.from_dict(tensors[roles["output"]]["format"])
        if fmt != out.fmt:
            failures.append(f"{layer['name']}: output format {out.fmt.describe()} != manifest {fmt.describe()}")
    if "training" in manifest:
        from .training import verify_training
        failures += verify_training(root, manifest, cache)
    n_layers = len(manifest["layers"]) + len(manifest.get("training", {}).get("layers", []))
    return VerifyReport(n_files, n_layers, failures)
