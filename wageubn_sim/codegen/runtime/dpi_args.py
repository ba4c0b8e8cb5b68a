"""What `make dpi-check BUNDLE=B` gives Verilator (argument ``verilator``) and the simulation
(argument ``plusargs``) for bundle B, read from its manifest.json (Python's standard library
only); exit 2 with the reason where the bundle does not fit this model or this testbench."""
import json
import sys
from pathlib import Path


def fail(message):
    print(f"dpi-check: {message}", file=sys.stderr)
    sys.exit(2)


def main(what, bundle):
    root = Path(bundle)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        model = json.loads((Path(__file__).parent / "layers.json").read_text())
    except (OSError, ValueError) as err:
        fail(f"cannot read {root / 'manifest.json'} ({err}); give BUNDLE=<a vector bundle folder>")
    tensors = manifest.get("tensors", {})
    inp, out = tensors.get("input"), tensors.get((manifest.get("outputs") or [None])[0])
    if inp is None or out is None:
        fail("the bundle names no input or output tensor")
    if inp["shape"][1:] != model["input_shape"] or out["shape"][1:] != model["output_shape"]:
        fail(f"the bundle's input {inp['shape'][1:]} and output {out['shape'][1:]} are not this "
             f"model's {model['input_shape']} and {model['output_shape']}")
    for t in (inp, out):
        if t["lanes"] != 1 or t["layout"] == "NHWC":
            fail("the testbench reads one value per word in NCHW order: write the bundle with "
                 "--lanes 1 and the NCHW layout")
    mem = {t: next((f["path"] for f in x["files"] if f["kind"] == "mem"), None) for t, x in (("in", inp), ("out", out))}
    if None in mem.values():
        fail("the bundle has no .mem files: write it with --formats mem")
    if what == "verilator":
        print(f"-GIMAGES={inp['shape'][0]} -GIN_BITS={inp['width']} -GIN_SIGNED={int(inp['signed'])} "
              f"-GOUT_BITS={out['width']} -GOUT_SIGNED={int(out['signed'])} "
              f"-GIN_WORDS={inp['memory_depth']} -GOUT_WORDS={out['memory_depth']}")
    else:
        print(f"+in={(root / mem['in']).resolve()} +out={(root / mem['out']).resolve()}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("verilator", "plusargs"):
        fail("usage: dpi_args.py verilator|plusargs BUNDLE")
    main(sys.argv[1], sys.argv[2])
