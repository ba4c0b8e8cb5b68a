"""Consistent forgeries of a bundle: values changed in every file of a tensor, each file
re-hashed in the manifest, so that only recomputation (or the structure) can tell."""
import hashlib
import json

import numpy as np

from wageubn_sim.vectors.bundle import to_layout
from wageubn_sim.vectors.formats import IMAGE_KINDS, pack_words


def rewrite_tensor(root, tensor_id: str, values: np.ndarray, manifest: dict | None = None) -> dict:
    """Write ``values`` (NCHW) into every file of a tensor, as the writer would, and update
    their sha256 in ``manifest`` (read from the bundle when not given; written back)."""
    own = manifest is None
    if own:
        manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["tensors"][tensor_id]
    stored = to_layout(np.asarray(values, np.int64), entry["layout"])
    words = pack_words(stored, entry["width"], entry["lanes"], entry["signed"])
    words += [manifest["options"].get("fill", 0)] * (entry.get("memory_depth", len(words)) - len(words))
    addressing = manifest["options"].get("hex_addressing", "word")
    for f in entry["files"]:
        path = root / f["path"]
        if f["kind"] == "npy":
            with open(path, "wb") as fh:
                np.save(fh, stored, allow_pickle=False)
        else:
            path.write_text(IMAGE_KINDS[f["kind"]][1](words, entry["word_width"], {"forged": 1}, addressing))
        f["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    if own:
        (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def read_values(root, tensor_id: str) -> np.ndarray:
    """A tensor's values (NCHW) from its .npy file."""
    from wageubn_sim.vectors.bundle import from_layout
    entry = json.loads((root / "manifest.json").read_text())["tensors"][tensor_id]
    npy = next(f for f in entry["files"] if f["kind"] == "npy")
    return from_layout(np.load(root / npy["path"], allow_pickle=False), entry["layout"])


def forge_value(root, tensor_id: str, index: int = 0, flip_bit: int | None = None, delta: int = 1):
    """Change one value of a tensor in all its files and rewrite their sha256."""
    q = read_values(root, tensor_id).copy()
    if flip_bit is None:
        q.reshape(-1)[index] += delta
    else:
        q.reshape(-1)[index] ^= 1 << flip_bit
    rewrite_tensor(root, tensor_id, q)
