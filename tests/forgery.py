"""Consistent forgeries of a bundle: one value changed, its file re-hashed in the manifest."""
import hashlib
import json

import numpy as np


def forge_value(root, tensor_id: str, index: int = 0, flip_bit: int | None = None, delta: int = 1):
    """Change one value of a tensor (keeping only its .npy file) and rewrite its sha256, so that
    only recomputation can tell."""
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["tensors"][tensor_id]
    entry["files"] = [f for f in entry["files"] if f["kind"] == "npy"]
    path = root / entry["files"][0]["path"]
    q = np.load(path, allow_pickle=False)
    if flip_bit is None:
        q.reshape(-1)[index] += delta
    else:
        q.reshape(-1)[index] ^= 1 << flip_bit
    with open(path, "wb") as fh:
        np.save(fh, q, allow_pickle=False)
    entry["files"][0]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))
