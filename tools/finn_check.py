"""Our exports in FINN's front end (finn-plus), in two environments: FINN pins older brevitas,
onnx and onnxruntime than ours, so it lives in a venv of its own (installed with --no-deps).

    # 1. ours: export every bnn_pynq fixture, with its input and the engine's results
    .venv/bin/python tools/finn_check.py export /tmp/finn
    # 2. FINN's (tools/finn_check.py needs only finn, qonnx and numpy there):
    python -m venv /tmp/fvenv && /tmp/fvenv/bin/pip install --no-deps finn-plus==1.6.1 && \\
        /tmp/fvenv/bin/pip install qonnx==1.0.0 onnx onnxruntime numpy rich termcolor pyyaml scipy
    /tmp/fvenv/bin/python tools/finn_check.py check /tmp/finn

``check`` runs cleanup, ConvertQONNXtoFINN and Streamline on each export and executes it with
qonnx's execution: the last MatMul (the last integer tensor) must equal the engine's exactly;
the output after it is FINN's own float32 rewrite of the float tail (Streamline folds Sub, Div,
Mul, Add into one Mul and one Add), compared and reported in float32 ulps. Exit 1 if an
integer tensor differs or a model does not convert."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def export(folder: Path) -> int:
    import warnings

    import numpy as np
    import onnx
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from test_bnn_pynq import NAMES, _load
    from wageubn_sim.qonnx import to_qonnx
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        _, graph, x, _ = _load(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = graph.run(x[:1])
        unit = np.array([float.fromhex(u) for u in graph.meta["float_tail"]["unit"]])
        onnx.save(to_qonnx(graph), folder / f"{name}.onnx")
        np.savez(folder / f"{name}.npz", input=x[:1], output=result.values.astype(np.float32),
                 last=result.q * unit)
        print(f"wrote {folder / name}.onnx")
    return 0


def check(folder: Path) -> int:
    import numpy as np
    from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN
    from finn.transformation.streamline import Streamline
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model
    failed = 0
    for path in sorted(folder.glob("*.onnx")):
        data = np.load(path.with_suffix(".npz"))
        try:
            model = cleanup_model(ModelWrapper(str(path))).transform(ConvertQONNXtoFINN()).transform(Streamline())
            ctx = execute_onnx(model, {model.graph.input[0].name: data["input"]}, return_full_exec_context=True)
        except Exception as err:  # FINN raises many kinds on what it does not convert
            print(f"{path.stem}: FINN does not convert it ({type(err).__name__}: {err})")
            failed += 1
            continue
        last = [n for n in model.graph.node if n.op_type == "MatMul"][-1]
        exact = np.array_equal(ctx[last.output[0]], data["last"])
        out = ctx[model.graph.output[0].name].astype(np.float32)
        ulps = int(np.abs(out.view(np.int32).astype(np.int64) - data["output"].view(np.int32)).max())
        ops = [n.op_type for n in model.graph.node]
        print(f"{path.stem}: {len(ops)} nodes after Streamline ({ops.count('MultiThreshold')} MultiThreshold); "
              f"last MatMul {'equals the engine' if exact else 'DIFFERS from the engine'}; "
              f"output within {ulps} float32 ulps (FINN's own float tail: {' -> '.join(ops[ops.index('MatMul', len(ops) - 4):])})")
        failed += not exact
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["export", "check"])
    parser.add_argument("folder")
    args = parser.parse_args(argv)
    return (export if args.step == "export" else check)(Path(args.folder))


if __name__ == "__main__":
    sys.exit(main())
