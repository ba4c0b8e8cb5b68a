"""A built golden model as a second recomputation of a bundle (`verify B --golden DIR`): its
`golden --taps` run on the bundle's own input, every layer's output and accumulator compared
with the bundle's tensors and every event count with the manifest's."""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..vectors.bundle import file_safe
from ..vectors.verify import load_bundle

TIMEOUT_S = 600


def check_bundle(golden_dir, bundle) -> tuple[int, list]:
    """(layers compared, failures) of the golden model built in ``golden_dir`` (make -C) on
    ``bundle``; ValueError where the folder has no built model or the program fails."""
    folder = Path(golden_dir)
    program = folder / "golden"
    if not program.is_file():
        raise ValueError(f"{folder} has no built golden model: run wageubn-sim codegen, then make -C {folder}")
    try:
        manifest, values = load_bundle(Path(bundle))
    except ValueError as err:  # verify lists what is wrong with its files
        return 0, [f"golden: not run: the bundle's tensors do not load ({err})"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "input.npy", values["input"].astype(np.int64))
        done = subprocess.run([str(program), "--taps", str(tmp / "taps"), str(tmp / "input.npy"),
                               str(tmp / "out.npy")], capture_output=True, text=True, timeout=TIMEOUT_S)
        if done.returncode != 0:
            raise ValueError(f"{program} failed on the bundle's input: {done.stderr.strip()[-500:]}")
        events = json.loads((tmp / "taps" / "events.json").read_text())
        failures = []
        for layer in manifest["layers"]:
            folder_name = file_safe(layer["name"])
            tensors = layer["tensors"]
            for role in ("output", "accumulator"):
                if role not in tensors:
                    continue
                tap = tmp / "taps" / folder_name / f"{role}.npy"
                want = values[tensors[role]]
                got = np.load(tap, allow_pickle=False) if tap.is_file() else None
                if got is None or got.shape != want.shape or not np.array_equal(got, want):
                    bad = "missing" if got is None else "of another shape" if got.shape != want.shape else \
                        f"{int(np.count_nonzero(got != want))} of {want.size} values differ"
                    failures.append(f"golden: layer {layer['name']} {role}: {bad}")
            if events.get(folder_name) != layer.get("register_events"):
                failures.append(f"golden: layer {layer['name']} events {events.get(folder_name)} != "
                                f"the manifest's {layer.get('register_events')}")
    return len(manifest["layers"]), failures
